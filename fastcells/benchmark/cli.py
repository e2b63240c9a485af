"""``python -m fastcells bench``: measure, then write results.json, results.csv, report.md and plots."""

import os

import torch

from .. import environment
from . import cases as cases_mod
from . import providers as providers_mod

GROUPS = ("step", "generate", "fastrnns", "flashrnn", "hidden", "batch")


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="a few points per group, fewer rounds (under 2 minutes on a 2-core CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="device to benchmark (default: cuda when a GPU is visible, else cpu)")
    parser.add_argument("--cells", nargs="+", choices=cases_mod.CELLS, default=list(cases_mod.CELLS))
    parser.add_argument("--dtype", nargs="+", choices=list(cases_mod.DTYPES),
                        help="dtypes (default: float32 and bfloat16)")
    parser.add_argument("--modes", nargs="+", choices=cases_mod.MODES, default=list(cases_mod.MODES))
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS))
    parser.add_argument("--providers", nargs="+", choices=providers_mod.NAMES, metavar="NAME",
                        help="measure only these of the usable providers (default: all; "
                        f"names: {', '.join(providers_mod.NAMES)}); ratios need torch.nn and reference")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: bench/results/<device name>/)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per case (default 5, quick 3)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="time per provider per round (default: cpu 0.3, cuda 0.05; quick 0.05)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and environment.cuda_unavailable():
        print(f"fastcells bench: --device cuda, but {environment.cuda_unavailable()}")
        return 2
    try:
        import matplotlib  # noqa: F401 - the report's plots
        import tqdm  # noqa: F401 - the progress bar
    except ImportError as error:
        print(f"fastcells bench needs matplotlib and tqdm ({error}): pip install 'fastcells[bench]'")
        return 2
    from . import stability
    from .report import write_all
    from .run import run_cases

    rounds = args.rounds or (3 if args.quick else 5)
    budget = args.budget or (0.3 if device == "cpu" and not args.quick else 0.05)
    cases = [case for case in cases_mod.make_cases(device, args.quick, args.cells, args.dtype, args.modes)
             if case.group in args.groups]
    out_dir = args.out or os.path.join("bench", "results", environment.device_slug(device))
    busy = stability.machine_busy()
    warning = stability.busy_warning(busy)
    if warning:
        print(f"fastcells bench: warning: {warning}")
    meta = {"device": device, "device_name": environment.device_name(device),
            "versions": environment.versions(), "git": environment.git_revision(),
            "date": environment.now_utc(), "quick": args.quick, "rounds": rounds, "budget_s": budget,
            "threads": torch.get_num_threads(), "providers": args.providers or "all usable",
            "machine_busy": busy, "isa_settings": environment.isa_settings()}
    print(f"fastcells bench on {meta['device_name']}: {len(cases)} cases, {rounds} rounds")
    rows = run_cases(cases, device, rounds, budget, progress=not args.no_progress,
                     only=args.providers)
    meta["unstable_rows"] = sum(bool(row.get("unstable")) for row in rows)
    paths = write_all(out_dir, meta, rows)
    print(f"wrote {len(paths)} files to {os.path.abspath(out_dir)}:")
    for path in paths:
        print(f"  {os.path.basename(path)}")
    measured = sum(bool(row.get("rounds_s")) for row in rows)
    print(f"{meta['unstable_rows']} of {measured} rows unstable (their rounds spread too much to support "
          "their ratio to torch.nn; marked in report.md and results.json)")
    return 0
