"""The persistent kernels' variant matrix on a CUDA GPU (issues 14 and 15): every variant of the cuda
backend's persistent kernels (8 or 16 hidden units a block x flag or grid synchronization, or flags in
thread-block clusters of 4 or 8 blocks), and the triton backend's paths (its default, its unit-tiled
kernels per step and persistent), against the cuda per-step path and torch.nn in bfloat16 and float16
(cuDNN: standard algorithm in bfloat16, its persistent one where torch picks it in float16), side by
side in one process, inference (forward) and training (forward + backward), at the issue's target
shapes (B=16 T=1024 H=768 in 16 bits, fastrnns' T=100 B=64 H=512 in float32 on tf32) and over the
H x B sweep.

    python bench/persistent_variants.py --out DIR [--quick]

Writes DIR/variants.json (every measurement: median and interquartile range of the rounds in ms, peak
memory, and each fastcells path's largest difference from the per-step path's output, relative to the
output's largest value) and DIR/variants.md (one table a case, ratios against torch.nn in the case's
dtype). Providers are named as fastcells/dispatch.py names paths ("torch", "per-step", "persistent 8
flags", ...; "torch float16" is torch.nn computing in the other 16-bit dtype), so bench/dispatch_table.py
turns the JSON into a dispatch table as it is.
Each case is written as soon as it is measured, so a run cut short keeps what it measured.
"""

import argparse
import json
import pathlib
import statistics
import sys

import torch

import fastcells
from fastcells import _extension, dispatch
from fastcells.backends import cuda as cuda_backend

# (units a block, synchronization): flags, grid, or flags in thread-block clusters of 4 or 8 blocks
# (bench/persistent_probe.cu times clusters of 2 too).
VARIANTS = [(units, sync) for units in (8, 16) for sync in ("flags", "grid", "cluster4", "cluster8")]
CLASSES = {"lstm": (fastcells.LSTM, {}), "gru": (fastcells.GRU, {}),
           "rnn_tanh": (fastcells.RNN, {"nonlinearity": "tanh"})}


TARGET_CASES = 4  # the first cases(): the issues' target shapes


def cases(quick):
    """(cell, B, T, H, dtypes) to measure, most important first: the TARGET_CASES target shapes, then
    the sweep."""
    targets = [(cell, 16, 1024, 768, ("bfloat16", "float16")) for cell in ("lstm", "gru", "rnn_tanh")]
    targets.insert(2, ("lstm", 64, 100, 512, ("float32",)))  # fastrnns: tf32 where torch.nn's cuDNN uses it
    if quick:
        return targets[:3]
    sweep = [(cell, B, 256, H, ("bfloat16",)) for cell in ("lstm", "gru")
             for H in (256, 512, 768, 1024) for B in (1, 4, 16, 64)]
    return targets + sweep


def median_and_iqr(times):
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return q[1], q[2] - q[0]


def time_ms(fn, rounds):
    """Milliseconds of ``fn()`` per round (CUDA events), after two warm-up calls."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def measure(module, x, mode, rounds):
    """(times, peak bytes, output) of one provider."""
    weights = torch.randn_like(x[:1, :1, :1]).expand(x.shape[0], x.shape[1], module.hidden_size)

    def call():
        if mode == "inference":
            with torch.no_grad():
                return module(x)[0]
        leaf = x.detach().requires_grad_()
        out = module(leaf)[0]
        (out * weights).sum().backward()
        return out.detach()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = time_ms(call, rounds)
    peak = torch.cuda.max_memory_allocated() - base
    return times, peak, call()


def run_case(cell, B, T, H, dtype_name, mode, rounds, triton=True):
    dtype = getattr(torch, dtype_name)
    cls, kwargs = CLASSES[cell]
    torch.manual_seed(0)
    fast = cls(H, H, backend="cuda", device="cuda", dtype=dtype, **kwargs)
    ref = getattr(torch.nn, cls.__name__)(H, H, device="cuda", dtype=dtype, **kwargs)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(T, B, H, device="cuda", dtype=dtype)
    rows = []

    def add(provider, module):
        times, peak, out = measure(module, x, mode, rounds)
        median, iqr = median_and_iqr(times)
        rows.append({"provider": provider, "median_ms": median, "iqr_ms": iqr, "peak_bytes": peak,
                     "out": out})

    add("torch", ref)
    if dtype != torch.float32:  # torch.nn in the other 16-bit dtype: cuDNN's persistent kernel is float16's
        other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
        add(f"torch {str(other).removeprefix('torch.')}", _twin(ref, other))
    cuda_backend.use_persistent(False)
    add("per-step", fast)
    for units, sync in VARIANTS:
        path = f"persistent {units} {sync}"
        cuda_backend.use_persistent(True, *dispatch.persistent_variant(path))
        launches = _extension.C.cuda_persistent_launches()
        clustered = _extension.C.cuda_persistent_cluster_launches()
        add(path, fast)
        if _extension.C.cuda_persistent_launches() == launches:
            rows[-1]["provider"] += " (did not fit: per-step ran)"
        elif sync.startswith("cluster") and _extension.C.cuda_persistent_cluster_launches() == clustered:
            rows[-1]["provider"] += " (clusters did not fit: ran without)"
    cuda_backend.use_persistent(None)
    if triton:
        _add_triton_variants(add, cls, kwargs, fast, H, dtype)

    base_out = next(r["out"] for r in rows if r["provider"] == "per-step").double()
    scale = base_out.abs().max().item() or 1.0
    for row in rows:
        out = row.pop("out")
        if out.dtype == dtype and not row["provider"].startswith("torch "):
            row["max_rel_diff_vs_per_step"] = (out.double() - base_out).abs().max().item() / scale
    return rows


def _add_triton_variants(add, cls, kwargs, fast, H, dtype):
    """The triton backend's paths at the same case (issue 15): its default (single-program sequence
    kernels for small layers, else a torch GEMM and a fused kernel per step), then the unit-tiled
    kernels launched per step and persistent (kernels/tiled_launch.py)."""
    if "triton" not in fastcells.available_backends("cuda"):
        return
    from fastcells.kernels import tiled_launch

    module = cls(H, H, backend="triton", device="cuda", dtype=dtype, **kwargs)
    module.load_state_dict(fast.state_dict())
    try:
        for mode, provider in (("off", "triton"), ("per-step", "triton tiled per-step"),
                               ("persistent", "triton tiled persistent")):
            tiled_launch.use_tiled(mode)
            try:
                add(provider, module)
            except RuntimeError as error:  # e.g. a persistent grid that gave up waiting
                print(f"  {provider}: {error}", flush=True)
    finally:
        tiled_launch.use_tiled("off")


def _twin(module, dtype):
    """A copy of torch.nn ``module`` in ``dtype`` (the other 16-bit type: cuDNN's algorithm differs)."""
    twin = type(module)(module.input_size, module.hidden_size, device="cuda", dtype=dtype,
                        **({"nonlinearity": module.nonlinearity} if hasattr(module, "nonlinearity") else {}))
    twin.load_state_dict(module.state_dict())

    class Casting(torch.nn.Module):  # takes and returns the case's dtype, computes in ``dtype``
        def __init__(self):
            super().__init__()
            self.inner, self.hidden_size = twin, module.hidden_size

        def forward(self, x):
            out, state = self.inner(x.to(dtype))
            return out.to(x.dtype), state

    return Casting()


def markdown(results):
    lines = ["# Persistent kernel variants", ""]
    for case in results:
        base = case["rows"][0]["median_ms"]
        lines += [f"## {case['cell']} B={case['B']} T={case['T']} H={case['H']} {case['dtype']} "
                  f"{case['mode']}", "", "| provider | ms (median) | IQR | vs torch.nn | peak MiB | "
                  "max rel diff vs per-step |", "|---|---|---|---|---|---|"]
        for row in case["rows"]:
            diff = row.get("max_rel_diff_vs_per_step")
            lines.append(f"| {row['provider']} | {row['median_ms']:.3f} | {row['iqr_ms']:.3f} | "
                         f"{base / row['median_ms']:.2f}x | {row['peak_bytes'] / 2**20:.1f} | "
                         f"{'' if diff is None else f'{diff:.1e}'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--quick", action="store_true", help="the issue's target shapes of LSTM and GRU only")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--triton-sweep", action="store_true",
                        help="measure the triton paths over the H x B sweep too, not at the targets only "
                             "(each new shape compiles its kernels)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("persistent_variants: no CUDA GPU visible")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for number, (cell, B, T, H, dtypes) in enumerate(cases(args.quick)):
        triton = args.triton_sweep or number < TARGET_CASES
        for dtype in dtypes:
            for mode in ("inference", "training"):
                rows = run_case(cell, B, T, H, dtype, mode, args.rounds, triton)
                results.append({"cell": cell, "B": B, "T": T, "H": H, "dtype": dtype, "mode": mode,
                                "rows": rows})
                best = min(rows, key=lambda r: r["median_ms"])
                print(f"{cell} B={B} T={T} H={H} {dtype} {mode}: torch.nn {rows[0]['median_ms']:.3f} ms, "
                      f"best {best['provider']} {best['median_ms']:.3f} ms", flush=True)
                (args.out / "variants.json").write_text(json.dumps(
                    {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "results": results}, indent=1))
                (args.out / "variants.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
