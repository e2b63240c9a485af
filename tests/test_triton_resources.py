"""The triton backend's persistent sequence kernels compiled ahead of time for sm_90 (H100/H200) in every
configuration its launch rule dispatches (bench/triton_resources.py, run without the interpreter in a
subprocess): none may spill registers, and the run must cover every kernel, dtype and block size."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNELS = [f"{cell}_sequence_{direction}_kernel" for cell in ("lstm", "gru", "rnn") for direction in ("fwd", "bwd")]
# BLOCK_H of every hidden size the persistent kernels take (kernels/launch.py MAX_HIDDEN: 64 for 16-bit
# dtypes, 32 for float32 and float64).
BLOCK_H = {"fp16": (16, 32, 64), "bf16": (16, 32, 64), "fp32": (16, 32), "fp64": (16, 32)}


@pytest.fixture(scope="module")
def configurations():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the GPU's launch rule
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "triton_resources.py"), "--json"], env=env,
                         capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert run.stdout, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_no_configuration_spills(configurations):
    spilling = [c for c in configurations if c["spills"]]
    assert not spilling, "\n".join(f"{c['kernel']} {c['constexprs']}: {c['spills']} bytes of spills"
                                   for c in spilling)


def test_every_kernel_dtype_and_block_size_is_compiled(configurations):
    seen = {(c["kernel"], c["signature"]["w_ptr"][1:], c["constexprs"]["BLOCK_H"]) for c in configurations
            if "_tiled_" not in c["kernel"]}
    expected = {(k, dtype, h) for k in KERNELS for dtype, sizes in BLOCK_H.items() for h in sizes}
    assert expected <= seen, sorted(expected - seen)


TILED_KERNELS = [f"{cell}_tiled_{launcher}_kernel" for cell in ("lstm", "gru", "rnn")
                 for launcher in ("step", "sequence", "bwd_step", "bwd_sequence")]


def test_every_tiled_kernel_and_dtype_is_compiled(configurations):
    seen = {(c["kernel"], c["signature"]["w_ptr"][1:]) for c in configurations}
    expected = {(k, dtype) for k in TILED_KERNELS for dtype in BLOCK_H}
    assert expected <= seen, sorted(expected - seen)


def test_launch_rule_is_what_was_compiled(configurations):
    """The rule the test covers is the dispatcher's: 16 batch rows, 8 warps (4 for float64)."""
    from fastcells.kernels import launch

    for c in configurations:
        if "_tiled_" in c["kernel"]:
            continue  # tiled_launch.py's fixed sizes, covered by the tiled test above
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                 "fp64": torch.float64}[c["signature"]["w_ptr"][1:]]
        assert c["constexprs"]["BLOCK_B"] == launch.SEQUENCE_BLOCK_B
        assert c["num_warps"] == launch.SEQUENCE_WARPS.get(dtype, 8)
