"""``python -m fastcells bench | check | info`` (see fastcells/cli.py)."""

import os
import sys

from .cli import main

try:
    status = main()
except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): not an error of ours
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
    status = 0
sys.exit(status)
