"""Who is measured: torch.nn, every fastcells backend usable for the case, the naive loop (the
reference backend), and on GPU the naive loop under torch.compile.

A provider builds, for one case, a zero-argument callable that runs one forward (inference) or one
forward + backward (training). All providers of a case share the same seeded weights and inputs.
"""

import torch

import fastcells
from fastcells import backends
from fastcells.cells import FAMILIES

TORCH = "torch.nn"
NAIVE = "reference"  # the naive loop: plain PyTorch ops one step at a time
NAIVE_COMPILED = "reference+compile"
# torch.compile unrolls the naive loop's Python time loop and compiles again for every new model and
# shape: about a minute per case at T=100, far more at T=1024. So the compiled loop runs on the fastrnns
# configuration in float32 only (PyTorch's own fastrnns benchmark compares against compiled loops
# there), and run.py drops it for the rest of a run once one compilation took too long.
COMPILED_GROUPS = ("fastrnns",)
COMPILED_DTYPES = ("float32",)

# Every provider name a run can have (fused backends other than reference are named after them).
NAMES = (TORCH,) + tuple(name for name in backends.NAMES if name != NAIVE) + (NAIVE, NAIVE_COMPILED)



def providers_for(case, device):
    """Provider names for ``case`` on ``device``: torch.nn first, then fused backends, then the naive
    loop (and its compiled form on GPU, see COMPILED_GROUPS)."""
    device = torch.device(device)
    fused = [name for name in backends.available_backends(device.type, case.torch_dtype)
             if name != NAIVE and backends.meant_for(name, device.type)]
    names = [TORCH] + fused + [NAIVE]
    if device.type == "cuda" and case.group in COMPILED_GROUPS and case.dtype in COMPILED_DTYPES:
        names.append(NAIVE_COMPILED)
    return names


def build_torch_module(case, device):
    """The torch.nn module of the case, with seeded weights, on ``device`` in the case's dtype."""
    torch.manual_seed(0)
    module_class = FAMILIES[case.cell].classes(case.steps == 0, fast=False)
    module = (module_class(case.input_size, case.hidden) if case.steps == 0
              else module_class(case.input_size, case.hidden, num_layers=case.layers))
    return module.to(device=device, dtype=case.torch_dtype)


def build_module(case, provider, device):
    """The module that ``provider`` runs for ``case``."""
    module = build_torch_module(case, device)
    if provider == TORCH:
        return module
    if provider == NAIVE_COMPILED:
        return torch.compile(fastcells.convert(module, backend=NAIVE), fullgraph=True)
    return fastcells.convert(module, backend=provider)


def make_inputs(case, device):
    """(x, hx) for the case: x (T, B, I) for a layer or (B, I) for a cell step; hx a random state for
    cells and the generate group's layers (L, B, H), else None (zero state)."""
    generator = torch.Generator().manual_seed(1)
    options = {"dtype": case.torch_dtype}

    def random_state(*shape):
        h = torch.randn(*shape, generator=generator, **options)
        hx = (h, h.clone()) if case.cell == "lstm" else h
        return tuple(t.to(device) for t in hx) if isinstance(hx, tuple) else hx.to(device)

    if case.steps == 0:
        x = torch.randn(case.batch, case.input_size, generator=generator, **options)
        return x.to(device), random_state(case.batch, case.hidden)
    x = torch.randn(case.steps, case.batch, case.input_size, generator=generator, **options)
    hx = random_state(case.layers, case.batch, case.hidden) if case.group == "generate" else None
    return x.to(device).requires_grad_(case.mode == "training"), hx


def make_runner(case, provider, device):
    """A callable running one call of the case for ``provider``. Inference calls must be timed
    inside ``torch.inference_mode()`` (see timing.mode_for), as a serving loop runs them."""
    module = build_module(case, provider, device)
    x, hx = make_inputs(case, device)
    if case.mode == "training":
        module.train()

        def run():
            output = module(x, hx)
            output = output[0] if isinstance(output, tuple) else output
            output.sum().backward()
    else:
        module.eval()

        def run():
            module(x, hx)
    return run
