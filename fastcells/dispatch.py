"""Which path a layer on CUDA tensors takes under backend "auto": torch's own (cuDNN), the cuda backend's
per-step loop, or its persistent kernel in one of its variants, from a table measured on the same GPU
model (``dispatch_tables/<device slug>.json``, written by ``bench/dispatch_table.py`` from the GPU
benchmarks). Cells choose the same way between torch.nn's step and the fused step kernel.

The rule: the measured entry of the same cell, dtype and mode (inference or training) nearest in batch
and hidden size, if it lies within a factor of two of both, names the fastest path among those the call
can take (the persistent kernels need no projection, and float32 runs them on tf32 only where
torch.backends.cudnn.allow_tf32). Where no entry is that close, or the GPU has no table, torch's own
path runs: a converted model is never slower than torch.nn where fastcells was not measured faster.

A named backend (``backend="cuda"``, FASTCELLS_BACKEND) always runs fastcells' kernels, and so does
code being compiled (torch.nn's own layers break the graph of torch.compile; fastcells' ops do not).
FASTCELLS_CUDA_PERSISTENT=1 or 0 forces the persistent kernels on or off (read once, by fastcells._C).
"""

import json
import math
import pathlib

import torch

from . import _extension, backends, environment
from .backends.layer_ops import needs_grad

TORCH = "torch"
PER_STEP = "per-step"
PERSISTENT = "persistent"  # paths "persistent <units> <sync>", sync flags, grid or cluster<blocks>

TABLES = pathlib.Path(__file__).with_name("dispatch_tables")
_CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
_CELL_STEPS = {"LSTMCell": "lstm", "GRUCell": "gru"}
_KERNEL_CELLS = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn", "rnn_relu": "rnn"}
_tables = {}  # device slug -> entries
_choices = {}  # call shape -> path


def table(slug):
    """The entries measured on the GPU model ``slug`` (empty where there is no table)."""
    if slug not in _tables:
        path = TABLES / f"{slug}.json"
        _tables[slug] = json.loads(path.read_text())["entries"] if path.exists() else []
    return _tables[slug]


def nearest_entry(entries, cell, dtype, mode, batch, hidden, step=False):
    """The entry of ``cell``, ``dtype`` ("bfloat16", ...) and ``mode`` ("inference", "training")
    nearest to (batch, hidden) in log scale, or None where none is within a factor of two of both.
    ``step``: a cell's single step (entries with steps 0), else a layer's sequence."""
    def distance(entry):
        return (abs(math.log2(entry["batch"] / batch)), abs(math.log2(entry["hidden"] / hidden)))

    close = [e for e in entries if (e["cell"], e["dtype"], e["mode"]) == (cell, dtype, mode)
             and (e["steps"] == 0) == step and max(distance(e)) <= 1]
    return min(close, key=lambda e: sum(distance(e)), default=None)


def fastest_path(entry, persistent_allowed):
    """The fastest path measured in ``entry`` among those the call can take; torch's if none is."""
    times = {path: ms for path, ms in entry["ms"].items()
             if path in (TORCH, PER_STEP) or (persistent_allowed and path.startswith(PERSISTENT))}
    return min(times, key=times.get) if TORCH in times else TORCH


def persistent_variant(path):
    """(units a block, flag synchronization, blocks a cluster) of a persistent path: "persistent 8
    flags" is (8, True, 1), "persistent 8 grid" (8, False, 1), "persistent 8 cluster4" (8, True, 4);
    units 0 for "per-step"."""
    if not path.startswith(PERSISTENT):
        return 0, True, 1
    _, units, sync = path.split()
    if sync.startswith("cluster"):
        return int(units), True, int(sync.removeprefix("cluster"))
    return int(units), sync == "flags", 1


def choose(cell, dtype, batch, hidden, training, persistent_allowed, device, step=False):
    """The path of one call (remembered per shape): ``cell`` "lstm", "gru", "rnn_tanh" or "rnn_relu",
    a layer's sequence or (``step``) a cell's step. A layer's choice of a persistent variant or of the
    per-step loop is recorded in fastcells._C, so the cuda ops run what was chosen."""
    key = (cell, dtype, batch, hidden, training, persistent_allowed, device.index, step)
    path = _choices.get(key)
    if path is None:
        dtype_name = str(dtype).removeprefix("torch.")
        entry = nearest_entry(table(environment.device_slug(device)), cell, dtype_name,
                              "training" if training else "inference", batch, hidden, step)
        path = _choices[key] = TORCH if entry is None else fastest_path(entry, persistent_allowed)
        if path != TORCH and not step and dtype in (torch.float16, torch.bfloat16, torch.float32):
            units, flag_sync, cluster = persistent_variant(path)
            _extension.C.record_cuda_persistent_choice(_KERNEL_CELLS[cell], dtype_name, batch, hidden,
                                                       training, units, flag_sync, cluster)
    return path


def runs_torch(module, backend, rows, flat_weights, mini_batch):
    """Whether ``module``'s call on ``rows`` (N, I) runs torch's own path: only under backend "auto"
    on CUDA tensors resolved to the cuda backend, outside torch.compile, where the table says so."""
    if (rows.device.type != "cuda" or backend.NAME != "cuda" or not backends.chosen_by_auto(module.backend)
            or torch.compiler.is_compiling()):
        return False
    training = needs_grad(rows, *flat_weights)
    persistent_allowed = module.proj_size == 0 and (rows.dtype != torch.float32
                                                    or torch.backends.cudnn.allow_tf32)
    return choose(_CELLS[module.mode], rows.dtype, mini_batch, module.hidden_size, training,
                  persistent_allowed, rows.device) == TORCH


def cell_runs_torch(module, input, weights):
    """Whether a cell's call runs torch.nn's own forward (the cell classes subclass their torch.nn
    twins): under the same conditions as a layer's, from the table's cell-step entries (steps 0)."""
    if (not isinstance(input, torch.Tensor) or not input.is_cuda
            or not backends.chosen_by_auto(module.backend) or torch.compiler.is_compiling()
            or backends.resolve(module.backend, "cuda", input.dtype).NAME != "cuda"):
        return False
    training = needs_grad(input, *weights)
    cell = _CELL_STEPS[module._KIND] if module._KIND != "RNNCell" else f"rnn_{module.nonlinearity}"
    batch = input.shape[0] if input.dim() == 2 else 1
    return choose(cell, input.dtype, batch, module.hidden_size, training, False, input.device,
                  step=True) == TORCH
