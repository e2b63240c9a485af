"""Backend registry and choice.

A backend is a module with ``NAME``, ``unusable_reason(device_type, dtype=None)`` and ``functions()``,
which gives its layer and step functions (shapes in ``reference.py``). Choice:
the ``backend=`` argument, else the environment variable ``FASTCELLS_BACKEND``, else ``auto``: the
first usable backend in preference order for the tensors' device, falling back to ``reference`` with
one logged warning. ``resolve`` makes the choice once per (requested name, FASTCELLS_BACKEND, device
type, dtype) and keeps it: a module's forward asks it at every call for the price of a dict lookup.
The triton backend imports Triton only once it is asked for on a device it can run on.
"""

import logging
import os

from . import cpu, cuda, reference, triton

logger = logging.getLogger("fastcells")

# Preference order: cuda (CUDA tensors), cpu (CPU tensors), triton, reference. A backend with
# AUTO_DEVICE_TYPES is chosen by "auto" only on those device types (the triton backend is usable on CPU
# tensors only through the slow interpreter, for tests).
_BACKENDS = {module.NAME: module for module in (cuda, cpu, triton, reference)}
NAMES = tuple(_BACKENDS)
ENV_VAR = "FASTCELLS_BACKEND"

_resolved = {}  # (requested, FASTCELLS_BACKEND, device type, dtype) -> a backend's functions()


def check_name(name):
    """Returns ``name`` if it names a backend or ``"auto"``; raises ValueError otherwise."""
    if name != "auto" and name not in _BACKENDS:
        valid = ", ".join(repr(n) for n in ("auto",) + NAMES)
        raise ValueError(f"unknown fastcells backend {name!r}; valid names are {valid}")
    return name


def available_backends(device_type="cpu", dtype=None):
    """Names of the backends usable on ``device_type`` tensors (of ``dtype``, or of some dtype when
    None) in this process, in preference order."""
    return [name for name, module in _BACKENDS.items()
            if module.unusable_reason(device_type, dtype) is None]


def unusable_reason(name, device_type="cpu", dtype=None):
    """Why backend ``name`` cannot run on ``device_type`` tensors (of ``dtype``), or None if it can."""
    return _BACKENDS[check_name(name)].unusable_reason(device_type, dtype)


def meant_for(name, device_type):
    """Whether backend ``name`` is meant to run real work on ``device_type`` tensors: ``auto`` and the
    benchmarks skip the others (the triton backend on CPU tensors, which only its interpreter runs)."""
    return device_type in getattr(_BACKENDS[name], "AUTO_DEVICE_TYPES", (device_type,))


def _auto(device_type, dtype):
    for name, module in _BACKENDS.items():  # meant_for first: it imports nothing
        if meant_for(name, device_type) and module.unusable_reason(device_type, dtype) is None:
            break
    if module is reference:
        reasons = "; ".join(
            f"{name}: {other.unusable_reason(device_type, dtype) or 'not chosen by auto here'}"
            for name, other in _BACKENDS.items() if other is not reference)
        logger.warning("fastcells: no fused backend for %s %s tensors, using 'reference' (%s)",
                       device_type, dtype, reasons)
    return module


def select(requested, device_type, dtype=None):
    """The backend module for ``requested`` ("auto" or a name) on ``device_type`` tensors of ``dtype``.

    "auto" consults FASTCELLS_BACKEND first. An explicitly named backend that cannot run raises
    RuntimeError saying why.
    """
    if requested == "auto":
        requested = check_name(os.environ.get(ENV_VAR, "auto") or "auto")
        if requested == "auto":
            return _auto(device_type, dtype)
    module = _BACKENDS[requested]
    reason = module.unusable_reason(device_type, dtype)
    if reason is not None:
        raise RuntimeError(f"fastcells backend {requested!r} is not usable: {reason}")
    return module


def auto_picks(name, device_type, dtype=None):
    """Whether "auto" (FASTCELLS_BACKEND unset) picks backend ``name`` for ``device_type`` tensors of
    ``dtype``."""
    return _auto(device_type, dtype).NAME == name


def chosen_by_auto(requested):
    """Whether the backend of a module asking for ``requested`` is "auto"'s choice (not named by the
    module or by FASTCELLS_BACKEND)."""
    return requested == "auto" and (os.environ.get(ENV_VAR) or "auto") == "auto"


def env_token():
    """FASTCELLS_BACKEND's value as resolve's cache key: None where unset, else its value (encoded, as
    CPython's os.environ keeps it). It is read at every call, since a program may set it at any time;
    os.environ.get takes 0.7 µs for an unset variable (it raises and catches a KeyError), a tenth of a
    cell's streaming step, and the dict behind CPython's os.environ answers in 0.03 µs."""
    data = getattr(os.environ, "_data", None)
    return data.get(ENV_KEY) if type(data) is dict else os.environ.get(ENV_VAR)


# The variable's name as os.environ's own dict keys it (bytes on POSIX).
ENV_KEY = getattr(os.environ, "encodekey", lambda name: name)(ENV_VAR)


def resolve(requested, device_type, dtype):
    """The layer and step functions of the backend ``select`` picks, kept after the first call."""
    key = (requested, env_token(), device_type, dtype)
    functions = _resolved.get(key)
    if functions is None:
        functions = _resolved[key] = select(requested, device_type, dtype).functions()
    return functions
