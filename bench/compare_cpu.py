"""CPU comparison of fastcells against torch.nn (oneDNN/MKL) and the naive PyTorch loop.

Every case runs all providers side by side in one process, in interleaved rounds so that drift hits
them alike, and reports medians and the ratio of torch.nn's time to each provider's (> 1: faster than
torch.nn). Usage: ``python bench/compare_cpu.py [--quick]``.
"""

import argparse
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass

import torch
from torch import nn

import fastcells


@dataclass
class Case:
    name: str
    module: str  # torch.nn class name
    hidden: int
    batch: int
    steps: int = 0  # 0: a single cell step
    train: bool = False

    def build(self, provider):
        cls = getattr(nn, self.module)
        torch.manual_seed(0)
        model = cls(self.hidden, self.hidden)
        if provider != "torch.nn":
            model = fastcells.convert(model, backend=provider)
        return model

    def inputs(self):
        torch.manual_seed(1)
        if self.steps == 0:
            x = torch.randn(self.batch, self.hidden)
            h = torch.randn(self.batch, self.hidden)
            return x, ((h, h.clone()) if self.module == "LSTMCell" else h)
        x = torch.randn(self.steps, self.batch, self.hidden, requires_grad=self.train)
        return x, None

    def runner(self, model):
        """A call of one forward (inference) or forward + backward (training). Inference calls are
        timed inside one ``torch.inference_mode()`` block (see ``mode``), as a serving loop runs."""
        x, hx = self.inputs()
        if self.train:
            def run():
                output, _ = model(x)
                output.sum().backward()
        else:
            def run():
                model(x, hx)
        return run

    def mode(self):
        return torch.inference_mode(not self.train)


CASES = [
    Case("LSTMCell step B=1 H=64", "LSTMCell", 64, 1),
    Case("LSTMCell step B=1 H=256", "LSTMCell", 256, 1),
    Case("GRUCell step B=1 H=64", "GRUCell", 64, 1),
    Case("GRUCell step B=1 H=256", "GRUCell", 256, 1),
    Case("LSTM infer T=100 B=32 H=256", "LSTM", 256, 32, 100),
    Case("LSTM infer T=200 B=1 H=128", "LSTM", 128, 1, 200),
    Case("LSTM train T=100 B=32 H=256", "LSTM", 256, 32, 100, train=True),
    Case("GRU infer T=100 B=32 H=256", "GRU", 256, 32, 100),
    Case("GRU infer T=200 B=1 H=128", "GRU", 128, 1, 200),
    Case("GRU train T=100 B=32 H=256", "GRU", 256, 32, 100, train=True),
]


def time_calls(run, budget_s):
    """Median seconds per call of ``run`` over a batch of calls lasting about ``budget_s``."""
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, min(1000, int(budget_s / once)))
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(case, providers, rounds, budget_s):
    runners = {p: case.runner(case.build(p)) for p in providers}
    samples = {p: [] for p in providers}
    with case.mode():
        for run in runners.values():  # warm-up: allocator, oneDNN primitive caches, branch predictors
            for _ in range(3):
                run()
        for _ in range(rounds):
            for provider, run in runners.items():
                samples[provider].append(time_calls(run, budget_s))
    return {p: statistics.median(v) for p, v in samples.items()}


def git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def format_time(seconds):
    return f"{seconds * 1e6:9.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:9.2f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    args = parser.parse_args()
    rounds, budget = (3, 0.15) if args.quick else (5, 0.4)
    providers = ["torch.nn"] + [b for b in ("cpu",) if b in fastcells.available_backends()]
    providers.append("reference")
    print(f"fastcells {fastcells.__version__} (git {git_revision()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    header = f"{'case':34}" + "".join(f"{p:>14}" for p in providers)
    header += "".join(f"{'x vs torch (' + p + ')':>24}" for p in providers[1:])
    print(header)
    for case in CASES:
        times = measure(case, providers, rounds, budget)
        row = f"{case.name:34}" + "".join(f"{format_time(times[p]):>14}" for p in providers)
        row += "".join(f"{times['torch.nn'] / times[p]:>24.2f}" for p in providers[1:])
        print(row, flush=True)


if __name__ == "__main__":
    main()
