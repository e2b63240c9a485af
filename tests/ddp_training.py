"""A small training run of a fastcells model, in one process or as one rank of DistributedDataParallel
(gloo, CPU): test_distributed.py compares the two. Importable by spawned processes (no pytest here)."""

import os

import torch
import torch.distributed as dist
from torch import nn

import fastcells

STEPS, BATCH, T = 3, 8, 6


class Regressor(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.rnn = fastcells.LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64, backend=backend)
        self.head = nn.Linear(10, 1, dtype=torch.float64)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def data():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(T, BATCH, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(BATCH, 1, generator=gen, dtype=torch.float64)
    return x, y


def train(model, x, y):
    """STEPS of SGD on the mean squared error over the batch given; returns the model."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model


def single_process(backend):
    torch.manual_seed(0)
    return train(Regressor(backend), *data()).state_dict()


def rank_main(rank, world_size, port, backend, result_path):
    """One rank: trains on its equal share of the batch under DDP (which averages the gradients, so
    the result equals full-batch training); rank 0 saves the final state_dict."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(Regressor(backend))
        x, y = data()
        share = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        train(model, x[:, share], y[share])
        if rank == 0:
            torch.save(model.module.state_dict(), result_path)
        # Both ranks leave together, and without tearing their gloo connections down: a rank doing so
        # while the other was still in its last step aborted the process now and then ("terminate called
        # without an active exception", about one run in a few hundred); after this barrier it still did
        # (2 of 27 runs on 2026-11-29, under pytest, with fastcells' code paths unchanged). Exiting at once
        # skips gloo's teardown; the result is saved, and a failure before here still raises below.
        dist.barrier()
        os._exit(0)
    finally:
        dist.destroy_process_group()
