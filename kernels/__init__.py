"""Triton kernels of fastcells, installed as the subpackage ``fastcells.kernels`` (none yet)."""
