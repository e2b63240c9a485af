"""What this process runs on: versions, the device's name, the git revision. Used by ``info`` and by
the benchmark reports, so both describe a machine the same way."""

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess

import torch


def cpu_name():
    """The CPU's model name ("AMD EPYC 7B13"), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device):
    """A human-readable name of ``device`` (a torch.device or string); for the CPU with the threads, the
    instruction set of fastcells' kernels and that of torch's ("AMD EPYC (2 threads, avx512 (bf16
    products) kernels, torch AVX512)")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    isa = cpu_kernels_isa()
    if isa and cpu_bf16_products():
        isa += " (AMX bf16 products)" if cpu_amx_products() else " (bf16 products)"
    torch_isa = torch_cpu_capability()
    return (f"{cpu_name()} ({torch.get_num_threads()} threads{f', {isa} kernels' if isa else ''}"
            f"{f', torch {torch_isa}' if torch_isa else ''})")


# Environment variables that cap the instruction sets a process uses below what its CPU has: fastcells'
# kernels' (csrc/cpu/isa.h), ATen's vectorized kernels', oneDNN's (torch.nn's CPU layers) and MKL's (its
# GEMMs). With all of them at AVX2, an AVX-512 machine measures as an AVX2 one would (but for its caches
# and clocks).
ISA_VARIABLES = ("FASTCELLS_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                 "MKL_ENABLE_INSTRUCTIONS")


def isa_settings():
    """Those of ISA_VARIABLES set in this process, as {name: value}."""
    return {name: os.environ[name] for name in ISA_VARIABLES if os.environ.get(name)}


def torch_cpu_capability():
    """The instruction set of ATen's vectorized CPU kernels in this process ("AVX512", "AVX2",
    "DEFAULT"; ATEN_CPU_CAPABILITY lowers it), or None where this torch cannot say."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if get is not None else None


def cpu_kernels_isa():
    """The instruction set of the cpu backend's kernels in this process ("avx512", "avx2",
    "baseline"; csrc/cpu/isa.h), or None without the compiled extension."""
    from . import _extension

    return _extension.C.cpu_isa() if _extension.C is not None and hasattr(_extension.C, "cpu_isa") else None


def cpu_bf16_products():
    """Whether the cpu backend's bfloat16 layers multiply in bfloat16 in this process (AVX-512 BF16;
    csrc/cpu/bf16_products.h), else through float32 products."""
    from . import _extension

    return bool(_extension.C is not None and getattr(_extension.C, "cpu_bf16_products", lambda: False)())


def cpu_amx_products():
    """Whether those bfloat16 products run on AMX tiles in this process (csrc/cpu/bf16_products.h:
    cpu_has_amx; FASTCELLS_CPU_AMX=0 turns them off)."""
    from . import _extension

    return bool(_extension.C is not None and getattr(_extension.C, "cpu_amx_products", lambda: False)())


def cpu_bf16_backward_gemm():
    """The GEMM that the cpu backend's bfloat16 layers run their backward's products on (weight gradients,
    dx) in this process (csrc/cpu/bf16_backward_gemm.h): "vdpbf16ps" (ours, where the kernels have the
    bfloat16 products without AMX: cpu_bf16_products), "mkl" (MKL's bfloat16 GEMM, elsewhere where torch
    carries it) or "aten" (at::mm); FASTCELLS_CPU_BF16_GEMM picks one. None without the extension."""
    from . import _extension

    if _extension.C is None or not hasattr(_extension.C, "cpu_bf16_backward_gemm"):
        return None
    return _extension.C.cpu_bf16_backward_gemm()


def cpu_f16_backward_gemm():
    """The GEMM that the cpu backend's float16 layers run their backward's products on in this process
    (csrc/cpu/bf16_backward_gemm.h): "packed" (csrc/cpu/float_gemm.h's GEMM, which widens the operands as it
    packs them, where cpu_float_gemm() is "packed"), "widened" (blocks of the operands widened to float32
    for at::mm), both with float32 sums, or "aten" (at::mm on float32 copies of the whole operands, under
    FASTCELLS_CPU_BF16_GEMM=aten). None without the extension."""
    from . import _extension

    if _extension.C is None or not hasattr(_extension.C, "cpu_f16_backward_gemm"):
        return None
    return _extension.C.cpu_f16_backward_gemm()


def cpu_float_gemm():
    """The GEMM that the cpu backend's float32 layers run their products over all rows on (the backward's
    weight gradients and dx, input projections up front) in this process (csrc/cpu/bf16_backward_gemm.h): "packed" (ours, csrc/cpu/float_gemm.h: on AMD
    CPUs from Zen 5 on with the AVX-512 kernels, where MKL's SGEMM leaves half of each multiply-add idle)
    or "aten" (at::mm, MKL's); FASTCELLS_CPU_FLOAT_GEMM picks one. None without the extension."""
    from . import _extension

    if _extension.C is None or not hasattr(_extension.C, "cpu_float_gemm"):
        return None
    return _extension.C.cpu_float_gemm()


def device_slug(device):
    """``device_name`` as a folder name: "nvidia-h100-80gb-hbm3", "cpu-amd-epyc"."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu {cpu_name()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cuda_unavailable():
    """Why torch cannot run on a CUDA device here, or None when it can."""
    if torch.cuda.is_available():
        return None
    return "no CUDA device visible to torch" + ("" if torch.version.cuda else
                                                " (this torch build has no CUDA)")


def triton_version():
    """Triton's installed version, or None: read from its package metadata, without importing it
    (about 0.3 s)."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def versions():
    """Versions of everything that decides what the kernels do, as strings (None: not present)."""
    import fastcells

    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = str(torch.backends.cudnn.version())
    return {
        "fastcells": fastcells.__version__,
        "torch": torch.__version__,
        "triton": triton_version(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "python": platform.python_version(),
    }


def git_revision():
    """FASTCELLS_GIT_REVISION where set (a copy of the tree, as on a rented GPU machine, may carry no
    .git or a stale one), else the short git revision of the fastcells checkout (with "+dirty" for
    local changes), else None."""
    if os.environ.get("FASTCELLS_GIT_REVISION"):
        return os.environ["FASTCELLS_GIT_REVISION"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def now_utc():
    """The current time as an ISO 8601 string in UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
