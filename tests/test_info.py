"""python -m fastcells info: versions, devices, and each backend's status with its reason."""

import torch

import fastcells
from fastcells import backends, cli


def test_info_lists_versions_and_every_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"fastcells  {fastcells.__version__}" in out
    assert f"torch      {torch.__version__}" in out
    for name in backends.NAMES:
        assert f"  {name:10} " in out
    assert "reference  usable" in out


def test_info_gives_the_reason_a_backend_is_unusable(capsys):
    assert cli.main(["info", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    cuda_part = out[out.index("\ncuda"):]
    assert "cpu        not usable: it runs on CPU tensors only" in cuda_part
    if not torch.cuda.is_available():
        assert "no CUDA device visible" in cuda_part
