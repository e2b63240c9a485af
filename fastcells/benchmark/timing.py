"""How the cases are measured.

Every provider of a case is built first, warmed up, its peak memory of one call measured, and then
timed in interleaved rounds (round r times provider 1, 2, ..., then round r + 1 starts again with
provider 1), so that drift of the machine (clock boost, neighbours, thermal) hits all providers alike.
A round first times one call to size its batch, then times a batch of calls lasting about
``budget_s`` (at most 1000 calls); the reported time is the median over rounds of each round's time
per call.

CPU: wall clock (perf_counter) around each call; a round's time is its median call. CUDA: CUDA events
around the whole batch on the current stream; a round's time is elapsed / calls, the mean call (single
calls are too short for event resolution).
"""

import contextlib
import os
import statistics
import time

import torch


def mode_for(case):
    """The autograd mode the case runs in: inference calls run under torch.inference_mode()."""
    return torch.inference_mode(case.mode != "training")


def _cpu_call_times(run, budget_s, max_calls):
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, min(max_calls, int(budget_s / once)))
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _cuda_call_times(run, budget_s, max_calls):
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    run()
    end.record()
    end.synchronize()
    once = max(begin.elapsed_time(end) / 1e3, 1e-7)
    calls = max(1, min(max_calls, int(budget_s / once)))
    begin.record()
    for _ in range(calls):
        run()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3 / calls


def time_round(run, device, budget_s, max_calls=1000):
    """Seconds per call of ``run`` in one round of calls lasting about ``budget_s`` in all: the median
    call on the CPU, the mean call (one pair of CUDA events around them all) on CUDA."""
    if torch.device(device).type == "cuda":
        return _cuda_call_times(run, budget_s, max_calls)
    return _cpu_call_times(run, budget_s, max_calls)


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2 (the profiler's C++ side prints start/stop lines there)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(run):
    """The most bytes held by torch's CPU allocator at once during one call, above what was held
    before it, read from the profiler's allocation events (so it does not depend on malloc reusing
    pages, as resident-set sizes would)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def peak_bytes(run, device):
    """Peak memory one call of ``run`` allocates above what was allocated before it, in bytes
    (CUDA: the caching allocator's peak of allocated tensor memory, ``max_memory_allocated``, not of
    reserved memory; CPU: torch's CPU allocations, see _cpu_peak_bytes)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _cpu_peak_bytes(run)


def measure(case, runners, device, rounds, budget_s, warmup=3, on_round=None):
    """Times every runner of ``runners`` ({provider: run}) for ``case`` in interleaved rounds.

    Returns {provider: {"time_s": median seconds per call, "rounds_s": per-round times,
    "peak_bytes": peak memory of one call}}. ``on_round()`` is called after each timed round of each
    provider (for a progress bar).
    """
    results = {provider: {"rounds_s": []} for provider in runners}
    with mode_for(case):
        for run in runners.values():  # allocator, oneDNN/cuDNN plans, autotuning, compilation
            for _ in range(warmup):
                run()
        for provider, run in runners.items():
            results[provider]["peak_bytes"] = peak_bytes(run, device)
        for _ in range(rounds):
            for provider, run in runners.items():
                results[provider]["rounds_s"].append(time_round(run, device, budget_s))
                if on_round is not None:
                    on_round()
    for result in results.values():
        result["time_s"] = statistics.median(result["rounds_s"])
    return results
