"""The command: option parsing, the loop over backend x cell x dtype x configuration, exit status."""

import sys
import time

import torch

from .. import backends, environment
from .compare import _dtype_name, build_case, check_backend, skipped
from .configs import CELLS, DEFAULT_DTYPES, DTYPES, configs_for
from .report import Table, summary, write_junit


def add_arguments(parser):
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device to check on (default: cpu)")
    parser.add_argument("--backend", action="append", choices=backends.NAMES,
                        help="backend to check (repeatable; default: every backend usable on the device)")
    parser.add_argument("--dtype", action="append", choices=tuple(DTYPES),
                        help="dtype to check (repeatable; default: float32, float64, float16 and "
                             "bfloat16)")
    parser.add_argument("--cells", action="append", choices=CELLS,
                        help="cell type to check (repeatable; default: all)")
    parser.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML file, one testcase per check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random data (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="print only the failures and the summary")


def _fail_usage(message):
    print(f"python -m fastcells check: error: {message}", file=sys.stderr)
    return 2


def _selected_backends(requested, device_type):
    """(names, error): the backends to check; an explicitly named backend that cannot run on
    ``device_type`` at all is an error (the user asked for it: a table of skips would hide that)."""
    if not requested:
        return backends.available_backends(device_type), None
    names = list(dict.fromkeys(requested))
    for name in names:
        reason = backends.unusable_reason(name, device_type)
        if reason is not None:
            return names, f"backend {name!r} is not usable on {device_type}: {reason}"
    return names, None


def run(args):
    """Runs the checks; returns 0 when none failed, 1 when one did, 2 on a usage problem."""
    device = args.device
    if device == "cuda" and environment.cuda_unavailable():
        return _fail_usage(f"--device cuda: {environment.cuda_unavailable()}")
    names, error = _selected_backends(args.backend, device)
    if error:
        return _fail_usage(error)
    dtypes = [DTYPES[name] for name in dict.fromkeys(args.dtype or DEFAULT_DTYPES)]
    cells = list(dict.fromkeys(args.cells or CELLS))

    if not args.quiet:
        print(f"fastcells check on {device}: backends {', '.join(names)}; "
              f"dtypes {', '.join(_dtype_name(d) for d in dtypes)}; cells {', '.join(cells)}; "
              f"seed {args.seed}")
        if not args.backend:  # say which backends the default left out, and why
            for name in backends.NAMES:
                if name not in names:
                    print(f"not checked: {name} ({backends.unusable_reason(name, device)})")

    table = Table(quiet=args.quiet)
    checks, cases = [], {}
    start = time.perf_counter()
    for backend in names:
        for cell in cells:
            for dtype in dtypes:
                reason = backends.unusable_reason(backend, device, dtype)
                for config in configs_for(cell):
                    if reason is not None:
                        new = skipped(backend, cell, config, dtype, reason)
                    else:
                        key = (cell, config.name, dtype)
                        if key not in cases:  # torch.nn's results are shared by every backend
                            cases[key] = build_case(cell, config, dtype, device, args.seed)
                        new = check_backend(backend, cell, config, dtype, cases[key])
                    for check in new:
                        table.row(check)
                    checks.extend(new)
    seconds = time.perf_counter() - start

    print(summary(checks, seconds))
    if not any(check.result != "SKIP" for check in checks):
        print("warning: no check ran (every combination was skipped)")
    if args.junit_xml:
        write_junit(args.junit_xml, checks, seconds, {
            "device": device, "torch": torch.__version__, "seed": args.seed,
            "backends": ",".join(names), "dtypes": ",".join(_dtype_name(d) for d in dtypes),
        })
    return 1 if any(check.result == "FAIL" for check in checks) else 0
