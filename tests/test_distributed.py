"""DistributedDataParallel (gloo, 2 CPU processes) trains a fastcells model to the same parameters as one
process on the full batch, in float64 to tight tolerance: torch.distributed drives fastcells like any
torch module."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ddp_training
import fastcells

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_ddp_two_processes_match_full_batch(backend, tmp_path):
    if backend not in fastcells.available_backends():
        pytest.skip(f"backend {backend} not usable here")
    result = tmp_path / "rank0.pt"
    mp.spawn(ddp_training.rank_main, args=(2, _free_port(), backend, str(result)), nprocs=2, join=True)
    distributed = torch.load(result)
    single = ddp_training.single_process(backend)
    assert distributed.keys() == single.keys()
    for name, value in single.items():
        torch.testing.assert_close(distributed[name], value, atol=1e-12, rtol=1e-10, msg=name)
    torch.manual_seed(0)
    initial = ddp_training.Regressor(backend).state_dict()
    assert any(not torch.equal(initial[n], single[n]) for n in single), "training changed nothing"
