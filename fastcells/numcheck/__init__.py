"""``python -m fastcells check``: the numerical check to put in CI to trust the kernels on your hardware.

Every selected backend x cell x dtype x configuration (layers, directions, batch_first, packing,
proj_size, odd sizes, ...) runs forward and backward and is compared against torch.nn computed in
float64 on the same device with the same weights. One table row per check (max abs and rel error,
tolerance, PASS/FAIL/SKIP), a summary line, exit status 1 if any check failed; ``--junit-xml FILE``
writes one testcase per check.

Inputs, initial states, weights and upstream gradients are drawn in float64 and rounded to the dtype
under test, and the float64 reference computes on those rounded values: the measured error is the
computation's, not the rounding of its inputs. Each cell x configuration draws from its own seed, so a
restricted run (``--cells gru``) sees the same numbers as the full one.

configs.py   cells, dtypes, configurations, tolerance rules
compare.py   inputs, the float64 reference, running a module, errors
report.py    the table, the summary, the JUnit file
cli.py       the command
"""

from .cli import add_arguments, run
from .compare import measure
from .configs import CONFIGS, TOLERANCES, WHATS, configs_for

__all__ = ["add_arguments", "run", "measure", "CONFIGS", "TOLERANCES", "WHATS", "configs_for"]
