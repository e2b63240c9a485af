"""Runs the cases: builds every provider of each case, measures them side by side (timing.measure),
and returns one result row per (case, provider)."""

import time

import torch
from tqdm.auto import tqdm

from . import providers as providers_mod
from . import stability
from .timing import measure, mode_for


# A first call of the compiled naive loop (its compilation) slower than this drops that provider for
# the rest of the run: the report says so instead of the run taking an hour.
COMPILE_LIMIT_S = 120.0


def _ready_runners(case, names, device, dropped):
    """{provider: run} for the providers that build and survive one call; {provider: error} for the
    rest (a provider that cannot run a case is reported, not fatal). ``dropped`` ({provider: reason})
    lists providers given up on for the run; a too-slow compilation adds to it."""
    runners, errors = {}, {}
    for name in names:
        if name in dropped:
            errors[name] = dropped[name]
            continue
        try:
            run = providers_mod.make_runner(case, name, device)
            start = time.perf_counter()
            with mode_for(case):
                run()
            first_call_s = time.perf_counter() - start
            runners[name] = run
            if name == providers_mod.NAIVE_COMPILED and first_call_s > COMPILE_LIMIT_S:
                dropped[name] = (f"skipped: compiling took {first_call_s:.0f} s on an earlier case "
                                 f"(limit {COMPILE_LIMIT_S:.0f} s)")
        except Exception as error:  # noqa: BLE001 - any failure of a provider is a result to report
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    return runners, errors


def speedups(rows):
    """Adds "x_vs_torch" and "x_vs_naive" (time of torch.nn / naive loop over the row's time) to
    the rows of each case, in place."""
    by_case = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["provider"]] = row.get("time_s")
    for row in rows:
        times = by_case[row["case"]]
        for key, provider in (("x_vs_torch", providers_mod.TORCH), ("x_vs_naive", providers_mod.NAIVE)):
            base = times.get(provider)
            row[key] = base / row["time_s"] if base and row.get("time_s") else None
    return rows


def run_cases(cases, device, rounds, budget_s, progress=True, only=None):
    """Measures every case on ``device``; returns the result rows (see report.py for the fields).
    ``only`` (provider names) keeps just those of each case's providers."""
    plan = [(case, [name for name in providers_mod.providers_for(case, device)
                    if only is None or name in only]) for case in cases]
    total = sum(len(names) * rounds for _, names in plan)
    rows, dropped = [], {}
    with tqdm(total=total, disable=not progress, unit="round", dynamic_ncols=True) as bar:
        for case, names in plan:
            bar.set_description(case.name[:60])
            runners, errors = _ready_runners(case, names, device, dropped)
            measured = measure(case, runners, device, rounds, budget_s,
                               on_round=lambda: bar.update(1)) if runners else {}
            bar.update(len(errors) * rounds)
            for name in names:
                row = {"case": case.name, **case.as_dict(), "provider": name}
                if name in measured:
                    row.update(measured[name])
                else:
                    row.update(time_s=None, rounds_s=[], peak_bytes=None, error=errors[name])
                rows.append(row)
    speedups(rows)
    stability.mark(rows, providers_mod.TORCH)
    return rows
