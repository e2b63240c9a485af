"""Lets the benchmark suite import its case table from compare_cpu.py beside it."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
