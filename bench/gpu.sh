#!/usr/bin/env bash
# One command for a machine with a CUDA GPU and a preinstalled CUDA build of torch, no network needed
# (`make gpu`, or bench/gpu.sh [RESULTS_DIR]): builds fastcells in place with its CUDA extension, then
# runs the GPU tests, compute-sanitizer over the cuda ops, the benchmark cases of the issues' speed
# targets, the numerical check and the benchmark sweeps, leaving every log and report in one results
# folder (default bench/results/<gpu name>/).
#
# Rented GPU time is short, so the steps run in priority order inside a time budget
# (GPU_TIME_BUDGET seconds, default 540): each step has a cap, and a step is skipped once the budget
# is spent. GPU_ARCHIVE=FILE also packs the results folder into FILE (a .tgz) after every step, so
# whatever finished survives a cut-off.
#
# The CPU test suite is CI's job; here only the tests that touch CUDA run (names with cuda or triton:
# test_cuda.py, test_triton.py and the cuda variants of the shared suites; not test_triton_resources.py,
# which compiles for sm_90 on the CPU), in parallel where pytest-xdist is installed.
#
# It uses the python that holds the CUDA torch ($PYTHON, default python3), never the CPU-only .venv.
# compute-sanitizer comes from PATH or from .gpu-carry/ (make gpu-carry beforehand, and send that
# ignored folder along with the working tree).
# GPU_STEPS=name,name,... runs only the steps named (build, info, tests, memcheck, racecheck, synccheck,
# variants, dispatch-table, probe, bench-targets, check, bench-step, bench-hidden, bench-batch,
# bench-compiled): one lease's second call on a warm machine can skip the build and go on where the
# first stopped.
# Every step runs even if an earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail
PY=${PYTHON:-python3}
BUDGET=${GPU_TIME_BUDGET:-540}
RESERVE=15  # seconds kept back for the archive and the summary
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: $PY's torch sees no CUDA GPU; run this on a GPU machine" >&2
    exit 2
fi
DIR=${1:-bench/results/$("$PY" -c "from fastcells.environment import device_slug; print(device_slug('cuda'))")}
mkdir -p "$DIR"
failed=()
skipped=()

step() {  # step NAME LOG CAP COMMAND...: runs COMMAND for at most CAP seconds, output also to DIR/LOG
    local name=$1 log=$2 cap=$3 left status
    shift 3
    if [ -n "${GPU_STEPS:-}" ] && [[ ",$GPU_STEPS," != *",$name,"* ]]; then
        echo "== $name: not in GPU_STEPS"
        return
    fi
    left=$((BUDGET - SECONDS - RESERVE))
    if ((left < 20)); then
        echo "== $name: skipped, the time budget is spent"
        skipped+=("$name")
        return
    fi
    ((cap > left)) && cap=$left
    echo "== $name ($(date -u +%H:%M:%S), at most ${cap} s)"
    timeout -k 10 "$cap" "$@" 2>&1 | tee "$DIR/$log"
    status=${PIPESTATUS[0]}
    if ((status == 124 || status == 137)); then
        echo "== $name: stopped after ${cap} s" | tee -a "$DIR/$log"
        failed+=("$name (timed out)")
    elif ((status != 0)); then
        failed+=("$name")
    fi
    if [ -n "${GPU_ARCHIVE:-}" ]; then tar czf "$GPU_ARCHIVE" -C "$DIR" .; fi
}

# Build for this GPU's architecture only (half the nvcc time of the default 8.0;9.0), one job a core.
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
step build build.log 300 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}" \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip install -v --no-build-isolation --no-deps -e .
# Which libstdc++ the extension uses: on the H200 image (2026-11-28) an integer written to an error
# message from _C.so crashed inside a libstdc++ routine that gdb placed in _C.so itself (see
# bench/results/nvidia-h200/README.md); the build log above has the link line.
step info info.txt 60 sh -c "nvidia-smi; '$PY' -m fastcells info; ldd fastcells/_C*.so | grep stdc;
    echo \"libstdc++ internals defined in _C.so (expected 0): \$(nm -C --defined-only fastcells/_C*.so | grep -c '_M_insert<\|codecvt<')\""

PYTEST_OPTS=(-q -p no:cacheprovider --junit-xml "$DIR/tests.xml")
"$PY" -c "import xdist" 2>/dev/null && PYTEST_OPTS+=(-n 8)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_OPTS+=(--timeout 300)
step tests tests.log 180 "$PY" -m pytest tests -k "(cuda or triton) and not triton_resources" "${PYTEST_OPTS[@]}"

# compute-sanitizer right after the tests (a kernel that never ran on a GPU is checked before it is
# timed) over one call of every cuda-backend op (memcheck without torch's caching allocator,
# so a read past a tensor is a read past an allocation; racecheck for the shared-memory kernels).
# compute-sanitizer: on PATH, else from the nvidia-cuda-sanitizer-api wheel carried in .gpu-carry/
# (`make gpu-carry` on a machine with network; the GPU machines' image has none and no network).
SANITIZER=$(command -v compute-sanitizer || true)
wheel=$(ls .gpu-carry/nvidia_cuda_sanitizer_api-*.whl 2>/dev/null | head -n 1)
if [ -z "$SANITIZER" ] && [ -n "$wheel" ]; then
    "$PY" -m zipfile -e "$wheel" /tmp/fastcells-sanitizer &&
        SANITIZER=$(ls /tmp/fastcells-sanitizer/nvidia/cu*/bin/compute-sanitizer | head -n 1) &&
        chmod +x "$(dirname "$SANITIZER")"/* "$(dirname "$SANITIZER")"/../lib/*  # zipfile drops modes
fi
if [ -n "$SANITIZER" ]; then
    step memcheck memcheck.txt 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
        --error-exitcode 9 "$PY" bench/cuda_sanitize.py
    # racecheck did not finish in 90 s once the cluster kernels were in (H200, 2026-11-30)
    step racecheck racecheck.txt 240 "$SANITIZER" --tool racecheck --error-exitcode 9 \
        "$PY" bench/cuda_sanitize.py
    step synccheck synccheck.txt 90 "$SANITIZER" --tool synccheck --error-exitcode 9 \
        "$PY" bench/cuda_sanitize.py
else
    echo "== compute-sanitizer: skipped (not on PATH and no wheel in .gpu-carry/: run make gpu-carry)"
    skipped+=("compute-sanitizer")
fi

# The persistent kernels' variant matrix (synchronization x units a block x dtype) against the per-step
# path and torch.nn bfloat16 and float16, target shapes first; each case is saved as it finishes.
step variants variants.log 200 "$PY" bench/persistent_variants.py --out "$DIR/variants"
# The dispatch table of this GPU model from what was measured (the variants, and the targets' benchmark
# below where an earlier run left it); commit it into fastcells/dispatch_tables/ to make `auto` use it.
step dispatch-table dispatch-table.log 30 "$PY" bench/dispatch_table.py "$DIR/targets/results.csv" \
    "$DIR/variants/variants.json" --out "$DIR/dispatch_tables"

# Where a persistent forward step's time goes: the kernel without torch, each phase's cycles
# (bench/persistent_probe.cu), at the target shape of each cell and at LSTM's batch extremes.
step probe probe.txt 120 sh -c "nvcc -O3 -std=c++20 -lineinfo -Icsrc/include -Icsrc/cuda \
    -gencode arch=compute_${ARCH/./},code=sm_${ARCH/./} bench/persistent_probe.cu -o /tmp/persistent_probe &&
    for shape in 'lstm 1024 16 768' 'gru 1024 16 768' 'rnn 1024 16 768' 'lstm 1024 1 768' 'lstm 1024 64 768'; do
      /tmp/persistent_probe \$shape 10 || exit 1; done"

BENCH=("$PY" -m fastcells bench --device cuda --no-progress)
FUSED=(--providers torch.nn cuda triton reference)
# The issues' speed targets: FlashRNN's B=16 T=1024 H=768 and fastrnns' T=100 B=64 H=512.
step bench-targets bench-targets.log 240 "${BENCH[@]}" --groups flashrnn fastrnns --cells lstm gru \
    "${FUSED[@]}" --out "$DIR/targets"
step check check.txt 180 "$PY" -m fastcells check --device cuda --junit-xml "$DIR/check.xml"
# The sweeps, one group a step: a report is written only when its run ends, so a cut-off loses one
# group, not all three.
for group in step hidden batch; do
    step "bench-$group" "bench-$group.log" 300 "${BENCH[@]}" --groups "$group" "${FUSED[@]}" \
        --out "$DIR/$group"
done
# The naive loop under torch.compile (about a minute of compilation per case): last.
step bench-compiled bench-compiled.log 600 "${BENCH[@]}" --groups fastrnns --dtype float32 \
    --providers torch.nn cuda reference reference+compile --out "$DIR/compiled"

echo "== results in $DIR"
((${#skipped[@]})) && echo "skipped (time budget): ${skipped[*]}"
if ((${#failed[@]})); then
    echo "failed steps: ${failed[*]}" >&2
    exit 1
fi
