"""Loads the compiled extension fastcells._C once and registers the Python side of its ops.

``load_error`` is None when the extension is usable, else the reason it is not (shown by backends that
need it). Importing fastcells never fails because of it: the reference backend needs nothing compiled.
"""

load_error = None
C = None  # the module fastcells._C once loaded

try:
    from . import _C as C  # registers torch.ops.fastcells.*
except ImportError as error:  # not built, or built against another torch
    load_error = f"{type(error).__name__}: {error}"
else:
    from . import ops

    ops.register()
