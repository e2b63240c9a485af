"""Property tests (hypothesis): random configurations against torch.nn, forward and backward, for every
backend: cell type, sizes down to 1, layers, directions, batch_first, bias, proj_size, packed or padded
input, unbatched input, sequence length."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import assert_same_results, forward_backward, make_layer_twins

# Few examples through Triton's CPU interpreter (~3.5 ms per program instance); more elsewhere.
# (Each backend on CPU tensors, and on a GPU machine each fused backend on CUDA tensors too.)
EXAMPLES = {"triton": 8}
DEFAULT_EXAMPLES = 40


@st.composite
def configurations(draw):
    kind = draw(st.sampled_from(["lstm", "gru", "rnn_tanh", "rnn_relu"]))
    hidden = draw(st.integers(1, 9))
    config = {
        "kind": kind,
        "input_size": draw(st.integers(1, 6)),
        "hidden_size": hidden,
        "num_layers": draw(st.integers(1, 3)),
        "bidirectional": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "proj_size": draw(st.integers(0, hidden - 1)) if kind == "lstm" and hidden > 1 else 0,
        "steps": draw(st.integers(1, 6)),
        "batch": draw(st.integers(1, 4)),
        "input": draw(st.sampled_from(["padded", "packed", "unbatched"])),
    }
    config["lengths"] = draw(st.lists(st.integers(1, config["steps"]), min_size=config["batch"],
                                      max_size=config["batch"]))
    config["seed"] = draw(st.integers(0, 2**16))
    return config


def _check(config, backend, device):
    kwargs = {key: config[key] for key in ("num_layers", "bidirectional", "batch_first", "bias")}
    if config["proj_size"]:
        kwargs["proj_size"] = config["proj_size"]
    ref, fast = make_layer_twins(config["kind"], config["input_size"], config["hidden_size"],
                                 backend=backend, seed=config["seed"], device=device, **kwargs)
    gen = torch.Generator().manual_seed(config["seed"])
    steps, batch = config["steps"], config["batch"]
    prepare = None
    if config["input"] == "unbatched":
        x = torch.randn(steps, config["input_size"], generator=gen, dtype=torch.float64).to(device)
    else:
        shape = (batch, steps) if config["batch_first"] else (steps, batch)
        x = torch.randn(*shape, config["input_size"], generator=gen, dtype=torch.float64).to(device)
        if config["input"] == "packed":
            lengths = torch.tensor(config["lengths"])
            prepare = lambda t: pack_padded_sequence(  # noqa: E731
                t, lengths, batch_first=config["batch_first"], enforce_sorted=False)
    assert_same_results(forward_backward(fast, x, prepare=prepare),
                        forward_backward(ref, x, prepare=prepare), torch.float64)


def test_random_configurations_match_torch(device_backend):
    device, backend = device_backend
    examples = EXAMPLES.get(backend, DEFAULT_EXAMPLES) if device == "cpu" else DEFAULT_EXAMPLES

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(configurations())
    def run(config):
        _check(config, backend, device)

    run()
