"""The GPU dispatch (fastcells/dispatch.py): its rule on hand-made entries, the committed tables, and
torch's own path (functional.torch_rnn) against torch.nn, which it must equal exactly: it is the same
computation. The choice on CUDA tensors is tested in test_cuda.py."""

import importlib.util
import json
import pathlib

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fastcells
from fastcells import dispatch, functional
from fastcells.backends import reference

from conftest import make_layer_twins

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("dispatch_table", ROOT / "bench" / "dispatch_table.py")
dispatch_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dispatch_table)


def _entry(batch, hidden, ms):
    return {"cell": "lstm", "dtype": "bfloat16", "mode": "training", "batch": batch, "hidden": hidden,
            "steps": 100, "ms": ms}


ENTRIES = [_entry(16, 768, {"torch": 10.0, "per-step": 12.0, "persistent 8 flags": 3.0}),
           _entry(64, 512, {"torch": 2.0, "per-step": 1.5})]


@pytest.mark.parametrize("batch,hidden,expected", [
    (16, 768, 0), (20, 700, 0), (32, 1024, 0),  # within a factor of two of the first
    (64, 400, 1), (128, 256, 1),
    (4, 768, None), (16, 2048, None), (256, 512, None),  # nothing that close
])
def test_nearest_entry_within_a_factor_of_two(batch, hidden, expected):
    got = dispatch.nearest_entry(ENTRIES, "lstm", "bfloat16", "training", batch, hidden)
    assert got is (None if expected is None else ENTRIES[expected])


def test_nearest_entry_matches_cell_dtype_and_mode():
    for cell, dtype, mode in (("gru", "bfloat16", "training"), ("lstm", "float16", "training"),
                              ("lstm", "bfloat16", "inference")):
        assert dispatch.nearest_entry(ENTRIES, cell, dtype, mode, 16, 768) is None


def test_cell_steps_and_sequences_have_separate_entries():
    step = {**ENTRIES[0], "steps": 0}
    assert dispatch.nearest_entry([step], "lstm", "bfloat16", "training", 16, 768) is None
    assert dispatch.nearest_entry([step], "lstm", "bfloat16", "training", 16, 768, step=True) is step
    assert dispatch.nearest_entry(ENTRIES, "lstm", "bfloat16", "training", 16, 768, step=True) is None


def test_cpu_cells_never_take_torch_path():
    cell = fastcells.GRUCell(3, 4)
    assert not dispatch.cell_runs_torch(cell, torch.randn(2, 3), cell._weights())


def test_fastest_path_among_those_the_call_can_take():
    assert dispatch.fastest_path(ENTRIES[0], persistent_allowed=True) == "persistent 8 flags"
    assert dispatch.fastest_path(ENTRIES[0], persistent_allowed=False) == "torch"
    assert dispatch.fastest_path(ENTRIES[1], persistent_allowed=True) == "per-step"
    assert dispatch.fastest_path({"ms": {"per-step": 1.0}}, persistent_allowed=True) == "torch"


@pytest.mark.parametrize("path, variant", [
    ("persistent 8 flags", (8, True, 1)), ("persistent 16 grid", (16, False, 1)),
    ("persistent 8 cluster4", (8, True, 4)), ("persistent 16 cluster8", (16, True, 8)), ("per-step", (0, True, 1))])
def test_persistent_variant_of_a_path(path, variant):
    """What fastcells._C records for a path the table chose: units, flag synchronization, cluster."""
    assert dispatch.persistent_variant(path) == variant


def test_committed_tables_are_well_formed():
    paths = list(dispatch.TABLES.glob("*.json"))
    assert paths, "no dispatch table is committed"
    for path in paths:
        data = json.loads(path.read_text())
        assert data["entries"] and data["device"]
        for e in data["entries"]:
            assert e["cell"] in ("lstm", "gru", "rnn_tanh", "rnn_relu")
            assert e["mode"] in ("inference", "training")
            assert e["batch"] > 0 and e["hidden"] > 0 and "torch" in e["ms"]
            assert all(p in ("torch", "per-step") or p.split()[:1] == ["persistent"] for p in e["ms"])


def test_cpu_tensors_never_take_torch_path():
    layer = fastcells.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    assert not dispatch.runs_torch(layer, reference.functions(), x.view(10, 3), layer._flat_weights, 2)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind,kwargs", [("lstm", {}), ("lstm", {"proj_size": 2}), ("gru", {}),
                                         ("rnn_tanh", {}), ("rnn_relu", {})])
def test_torch_path_equals_torch_nn(kind, kwargs, packed):
    """functional.torch_rnn on the flattened layout gives torch.nn's results bit for bit (two layers,
    bidirectional), forward and gradients."""
    ref, fast = make_layer_twins(kind, 3, 5, 2, bidirectional=True, dtype=torch.float64, **kwargs)
    lengths = (4, 4, 4) if not packed else (4, 3, 1)
    seqs = [torch.randn(n, 3, dtype=torch.float64, requires_grad=True) for n in lengths]
    data = pack_sequence(seqs)
    if packed:
        expected = ref(data)
    else:
        expected = ref(torch.stack(seqs, dim=1))
    out_size = kwargs.get("proj_size") or 5
    hx = torch.zeros(4, 3, out_size, dtype=torch.float64)
    cx = torch.zeros(4, 3, 5, dtype=torch.float64) if kind == "lstm" else None
    rows = data.data if packed else torch.stack(seqs, dim=1).reshape(12, 3)
    sizes = data.batch_sizes if packed else torch.full((4,), 3)
    y, hn, cn = functional.torch_rnn(fast.mode, rows, sizes, hx, cx, fast._flat_weights, padded=not packed,
                                     num_layers=2, bidirectional=True, bias=True, dropout=0.0, training=True)
    out = expected[0].data if packed else expected[0].reshape(12, -1)
    assert torch.equal(y, out)
    states = expected[1] if kind != "lstm" else expected[1][0]
    assert torch.equal(hn, states)
    if kind == "lstm":
        assert torch.equal(cn, expected[1][1])


def test_dispatch_table_from_both_kinds_of_results(tmp_path):
    """bench/dispatch_table.py merges a bench results.csv (torch.nn and the per-step path) and a
    persistent_variants.py JSON (every path) of one GPU model into entries dispatch.py reads."""
    variants = {"device": "NVIDIA H200", "torch": "2.11", "cuda": "13.0", "results": [
        {"cell": "lstm", "B": 16, "T": 1024, "H": 768, "dtype": "bfloat16", "mode": "training", "rows": [
            {"provider": "torch", "median_ms": 29.0}, {"provider": "torch float16", "median_ms": 5.0},
            {"provider": "per-step", "median_ms": 40.0}, {"provider": "persistent 8 flags", "median_ms": 9.0},
            {"provider": "persistent 16 flags (did not fit: per-step ran)", "median_ms": 40.0},
            {"provider": "triton tiled persistent", "median_ms": 1.0}]}]}  # auto does not pick triton
    (tmp_path / "variants.json").write_text(json.dumps(variants))
    csv_path = ROOT / "bench" / "results" / "nvidia-h200" / "targets" / "results.csv"
    dispatch_table.main([str(csv_path), str(tmp_path / "variants.json"), "--out", str(tmp_path)])
    entries = json.loads((tmp_path / "nvidia-h200.json").read_text())["entries"]
    merged = dispatch.nearest_entry(entries, "lstm", "bfloat16", "training", 16, 768)
    assert merged["ms"]["persistent 8 flags"] == 9.0 and merged["ms"]["torch"] == 29.0
    assert "torch float16" not in merged["ms"] and len(merged["ms"]) == 3
    assert dispatch.fastest_path(merged, persistent_allowed=True) == "persistent 8 flags"
    assert dispatch.fastest_path(merged, persistent_allowed=False) == "torch"  # per-step measured 40 ms
