"""Runs every op of the cuda backend once at small odd sizes, for compute-sanitizer (bench/gpu.sh):
layers forward and backward (LSTM with and without projection, GRU, RNN relu; two layers,
bidirectional; padded and packed), the three cells, in float32 and bfloat16, and the opt-in persistent
kernels (every cell, both block widths and both synchronizations, and clusters of 2 and 8 blocks;
training and inference) in bfloat16 and float32 (tf32).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python bench/cuda_sanitize.py

(Without the caching allocator every tensor is its own allocation, so memcheck sees reads past one.)
"""

import torch
from torch.nn.utils.rnn import pack_sequence

import fastcells
from fastcells.backends import cuda as cuda_backend

DEVICE = "cuda"
LAYERS = ((fastcells.LSTM, {}), (fastcells.LSTM, {"proj_size": 3}), (fastcells.GRU, {}),
          (fastcells.RNN, {"nonlinearity": "relu"}))
CELLS = (fastcells.LSTMCell, fastcells.GRUCell, fastcells.RNNCell)


def run_layers(dtype):
    for cls, kwargs in LAYERS:
        layer = cls(5, 7, 2, bidirectional=True, backend="cuda", device=DEVICE, dtype=dtype, **kwargs)
        x = torch.randn(6, 3, 5, device=DEVICE, dtype=dtype, requires_grad=True)
        layer(x)[0].float().sum().backward()
        packed = pack_sequence([torch.randn(n, 5, device=DEVICE, dtype=dtype) for n in (4, 3, 1)])
        layer(packed)[0].data.float().sum().backward()


def run_cells(dtype):
    for cls in CELLS:
        cls(5, 7, backend="cuda", device=DEVICE, dtype=dtype)(torch.randn(2, 5, device=DEVICE, dtype=dtype))


def run_persistent():
    # (units, flag synchronization, blocks a cluster). Clusters split hidden sizes 64 and 60 (8 or 4
    # blocks; 60 is copied element by element), not 16 (then the variant runs without clusters).
    for units, flag_sync, cluster in [(8, True, 1), (8, False, 1), (16, True, 1), (16, False, 1), (8, True, 8),
                                      (16, True, 2)]:
        cuda_backend.use_persistent(True, units, flag_sync, cluster)
        for cls, kwargs in LAYERS:
            if "proj_size" in kwargs:
                continue
            sizes = ((5, torch.bfloat16), (33, torch.bfloat16), (33, torch.float32))
            if cluster > 1:
                sizes = ((64, torch.bfloat16), (60, torch.bfloat16), (64, torch.float32), (16, torch.bfloat16))
            for hidden, dtype in sizes:
                layer = cls(4, hidden, bidirectional=True, backend="cuda", device=DEVICE, dtype=dtype,
                            **kwargs)
                x = torch.randn(7, 3, 4, device=DEVICE, dtype=dtype, requires_grad=True)
                layer(x)[0].float().sum().backward()
                with torch.no_grad():
                    layer(x)
    cuda_backend.use_persistent(None)


if __name__ == "__main__":
    for dtype in (torch.float32, torch.bfloat16):
        run_layers(dtype)
        run_cells(dtype)
    run_persistent()
    torch.cuda.synchronize()
    print("cuda_sanitize: every cuda-backend op ran")
