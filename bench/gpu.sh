#!/usr/bin/env bash
# One command for a machine with a CUDA GPU and a preinstalled CUDA build of torch, no network needed
# (`make gpu`, or bench/gpu.sh [RESULTS_DIR]): builds fastcells in place (the CUDA extension too, once
# csrc/cuda exists), then runs the test suite, the numerical check and the full GPU benchmark, leaving
# every log and report in one results folder (default bench/results/<gpu name>/).
#
# It uses the python that holds the CUDA torch ($PYTHON, default python3), never the CPU-only .venv.
# Every step runs even if an earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: $PY's torch sees no CUDA GPU; run this on a GPU machine" >&2
    exit 2
fi
DIR=${1:-bench/results/$("$PY" -c "from fastcells.environment import device_slug; print(device_slug('cuda'))")}
mkdir -p "$DIR"
failed=()

step() {  # step NAME LOG COMMAND...: runs COMMAND, output to the terminal and to DIR/LOG
    local name=$1 log=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S))"
    if ! "$@" 2>&1 | tee "$DIR/$log"; then
        failed+=("$name")
    fi
}

step build build.log "$PY" -m pip install --no-build-isolation --no-deps -e .
step info info.txt "$PY" -m fastcells info
step tests tests.log "$PY" -m pytest tests -q -p no:cacheprovider --junit-xml "$DIR/tests.xml"
step check check.txt "$PY" -m fastcells check --device cuda --junit-xml "$DIR/check.xml"
step bench bench.log "$PY" -m fastcells bench --device cuda --out "$DIR" --no-progress
# The cuda backend's persistent LSTM kernel is opt-in until measured: the LSTM cases again with it on.
step bench-persistent bench-persistent.log env FASTCELLS_CUDA_PERSISTENT=1 \
    "$PY" -m fastcells bench --device cuda --cells lstm --modes inference --out "$DIR/persistent" --no-progress

echo "== results in $DIR"
if ((${#failed[@]})); then
    echo "failed steps: ${failed[*]}" >&2
    exit 1
fi
