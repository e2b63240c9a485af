"""``python -m fastcells info``: versions, devices, and each backend with "usable" or why it is not."""

import torch

from . import backends, environment

# What environment.cpu_bf16_backward_gemm() names, in words.
BF16_BACKWARD_GEMMS = {
    "mkl": "MKL's bfloat16 GEMM (float32 sums)",
    "vdpbf16ps": "fastcells' VDPBF16PS GEMM (float32 sums; csrc/cpu/bf16_gemm.h)",
    "aten": "at::mm",
}
# What environment.cpu_float_gemm() names, in words.
FLOAT_GEMMS = {
    "packed": "fastcells' packed GEMM (csrc/cpu/float_gemm.h)",
    "aten": "at::mm",
}
# What environment.cpu_f16_backward_gemm() names, in words.
F16_BACKWARD_GEMMS = {
    "packed": "fastcells' packed GEMM, widening as it packs (float32 sums; csrc/cpu/float_gemm.h)",
    "widened": "at::mm on blocks widened to float32 (float32 sums)",
    "aten": "at::mm (float32 copies)",
}


def add_arguments(parser):
    parser.add_argument("--device", action="append", choices=("cpu", "cuda"),
                        help="device type(s) to report backends for (default: cpu, and cuda when present)")


def device_types(requested=None):
    """The device types to describe: those requested, else cpu plus cuda when a GPU is visible."""
    if requested:
        return list(dict.fromkeys(requested))
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_status(device_type):
    """(name, reason) for every backend on ``device_type`` tensors; reason None means usable."""
    return [(name, backends.unusable_reason(name, device_type)) for name in backends.NAMES]


def describe(device_types_):
    """The report as lines of text."""
    lines = ["versions:"]
    for name, version in environment.versions().items():
        lines.append(f"  {name:10} {version if version is not None else 'not present'}")
    lines.append(f"  {'git':10} {environment.git_revision() or 'not a git checkout'}")
    for device_type in device_types_:
        if device_type == "cuda" and environment.cuda_unavailable():
            lines.append(f"cuda: {environment.cuda_unavailable()}")
        else:
            lines.append(f"{device_type}: {environment.device_name(device_type)}")
        for name, reason in backend_status(device_type):
            lines.append(f"  {name:10} {'usable' if reason is None else 'not usable: ' + reason}")
            if device_type == "cpu" and name == "cpu" and reason is None:
                lines.append(f"  {'':10} kernels for {environment.cpu_kernels_isa()} (the best this CPU "
                             "runs, or FASTCELLS_CPU_ISA)")
                gemm = FLOAT_GEMMS.get(environment.cpu_float_gemm(), "at::mm")
                lines.append(f"  {'':10} float32 layers' GEMMs over all rows on {gemm} "
                             "(FASTCELLS_CPU_FLOAT_GEMM=packed or aten)")
                if environment.cpu_amx_products():
                    products = "bfloat16 (AMX tiles; AVX-512 BF16 for up to 4 rows, or FASTCELLS_CPU_AMX=0)"
                elif environment.cpu_bf16_products():
                    products = "bfloat16 (AVX-512 BF16)"
                else:
                    products = "float32 (no AVX-512 BF16 in this CPU or these kernels)"
                lines.append(f"  {'':10} bfloat16 layers multiply in {products}")
                backward = BF16_BACKWARD_GEMMS.get(environment.cpu_bf16_backward_gemm(), "at::mm")
                lines.append(f"  {'':10} their backward's GEMMs on {backward} "
                             "(FASTCELLS_CPU_BF16_GEMM=mkl, vdpbf16ps or aten)")
                backward = F16_BACKWARD_GEMMS.get(environment.cpu_f16_backward_gemm(), "at::mm")
                lines.append(f"  {'':10} float16 layers multiply in float32, their backward's GEMMs on {backward}")
    return lines


def run(args):
    print("\n".join(describe(device_types(args.device))))
    return 0
