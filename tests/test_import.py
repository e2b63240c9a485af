"""``import fastcells`` stays light: Triton is imported only once the triton backend is asked for on a
device it can run on (about 0.3 s of the 0.32 s the import took when it was imported eagerly)."""

import subprocess
import sys


def _run(code):
    env = {"PATH": "/usr/bin:/bin"}  # no TRITON_INTERPRET from the test session
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.split()


def test_import_does_not_import_triton():
    code = ("import sys, torch, fastcells; "
            "fastcells.LSTM(3, 4)(torch.randn(2, 1, 3)); fastcells.GRUCell(3, 4)(torch.randn(1, 3)); "
            "print(fastcells.available_backends('cpu')); print('triton' in sys.modules)")
    assert _run(code)[-1] == "False"


def test_asking_for_the_triton_backend_imports_it():
    code = ("import os, sys; os.environ['TRITON_INTERPRET'] = '1'; import fastcells; "
            "print('triton' in fastcells.available_backends('cpu')); print('triton' in sys.modules)")
    assert _run(code) == ["True", "True"]
