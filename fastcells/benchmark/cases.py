"""The benchmark cases: which cell, shapes, mode and dtype each measurement uses.

Groups (the issue's list):
  step       one cell step at B=1, the streaming / online-inference path
  fastrnns   PyTorch's fastrnns benchmark configuration: T=100, B=64, I=H=512
  flashrnn   FlashRNN's configuration: B=16, T=1024, I=H=768 (bf16 on GPU)
  hidden     a sweep over the hidden size H at fixed B and T
  batch      a sweep over the batch size B at fixed H and T
  generate   a generation loop's call: a 2-layer model, T=1, B=1, H=200, with the state it returned
             (pytorch/examples' word language model generating text)
"""

from dataclasses import asdict, dataclass

import torch

CELLS = ("lstm", "gru", "rnn")
MODES = ("inference", "training")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    group: str
    cell: str  # one of CELLS
    mode: str  # one of MODES
    dtype: str  # a key of DTYPES
    hidden: int
    batch: int
    steps: int  # T; 0 means a single cell step (LSTMCell, ...)
    input_size: int
    layers: int = 1  # num_layers of a layer module

    @property
    def name(self):
        kind = f"{self.cell.upper()}Cell step" if self.steps == 0 else f"{self.cell.upper()} T={self.steps}"
        layers = f" L={self.layers}" if self.layers > 1 else ""
        return (f"{self.group}: {kind}{layers} B={self.batch} I={self.input_size} H={self.hidden} "
                f"{self.mode} {self.dtype}")

    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]

    def as_dict(self):
        return asdict(self)


# The dtypes benchmarked by default, on either device.
DEFAULT_DTYPES = ("float32", "bfloat16")


def make_cases(device_type, quick=False, cells=CELLS, dtypes=None, modes=MODES):
    """Every case for one device. ``quick`` keeps a few points of each group, sized so that the
    whole quick run on a 2-core CPU stays under 2 minutes."""
    dtypes = list(dtypes or DEFAULT_DTYPES)
    gpu = device_type != "cpu"
    cases = []

    def add(group, cell, mode, dtype, hidden, batch, steps, input_size=None, layers=1):
        cases.append(Case(group, cell, mode, dtype, hidden, batch, steps, input_size or hidden, layers))

    for cell in cells:
        for dtype in dtypes:
            # streaming: inference only (a serving loop), at a small and a medium H
            for hidden in ((64, 256) if quick else (64, 256, 1024)):
                add("step", cell, "inference", dtype, hidden, 1, 0)
            add("generate", cell, "inference", dtype, 200, 1, 1, layers=2)
            for mode in modes:
                # a quick CPU run keeps fastrnns inference only (training costs ~1 s a call)
                if not quick or gpu or mode == "inference":
                    add("fastrnns", cell, mode, dtype, 512, 64, 100)
                # T=1024 at H=768 costs seconds per call on a CPU: GPU, or the full CPU run only
                if gpu or not quick:
                    add("flashrnn", cell, mode, dtype, 768, 16, 1024)
                hidden_sizes = (64, 256) if quick else (64, 128, 256, 512, 1024)
                for hidden in hidden_sizes:
                    add("hidden", cell, mode, dtype, hidden, 16 if quick else 32, 50 if quick else 100)
                batch_sizes = (1, 16) if quick else (1, 4, 16, 64, 256)
                for batch in batch_sizes:
                    add("batch", cell, mode, dtype, 128 if quick else 256, batch, 50 if quick else 100)
    return cases
