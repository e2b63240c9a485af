"""Benchmarks of fastcells against torch.nn (cuDNN on GPU, oneDNN/MKL on CPU) and the naive PyTorch
loop, side by side in one process: ``python -m fastcells bench``.

cases.py     what is measured (shapes, cells, modes, dtypes)
providers.py who is measured (torch.nn, each fastcells backend, the naive loop, compiled or not)
timing.py    how: interleaved rounds of timed calls, medians, peak memory
report.py    JSON, CSV, Markdown and plots of the results
cli.py       the command line
"""
