"""Builds fastcells._C: the C++ ops always, the CUDA ops when a CUDA torch and nvcc are present.

Build isolation must be off (`pip install --no-build-isolation -e .`): the extension is compiled against
the torch that is installed, and an isolated build would fetch another torch (a 5 GB CUDA build).
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cuda_wanted():
    """CUDA kernels are built only where torch has CUDA and nvcc is found (FASTCELLS_NO_CUDA=1 skips)."""
    if os.environ.get("FASTCELLS_NO_CUDA") == "1":
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


# One C++ standard for every compiler of the project (also CMakeLists.txt and make cuda-check): C++20.
# torch 2.13's headers use C++20 features (in C++17 GCC takes them only as extensions, with a warning
# per file) and its extension build picks C++20 by itself; given here so that every torch we support
# (2.11 and newer) and nvcc build the same way.
CXX_STANDARD = "-std=c++20"


def extension():
    # -fno-trapping-math lets the compiler if-convert the clamps and floor of the gate math, so the
    # pointwise loops vectorize (results are unchanged: it only drops FP-exception side effects).
    cxx_flags = [CXX_STANDARD, "-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    # The build runs on any x86-64 CPU: the CPU kernels are compiled once per instruction set
    # (csrc/cpu/isa_*.cpp) and the best the running CPU has is picked at load time. FASTCELLS_NATIVE=1
    # also tunes everything else for the building machine (-march=native), tying the build to it.
    if os.environ.get("FASTCELLS_NATIVE") == "1":
        cxx_flags.append("-march=native")
    common = dict(
        name="fastcells._C",
        sources=sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp"),
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_link_args=["-fopenmp"],
    )
    cuda_sources = sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
    if cuda_sources and cuda_wanted():
        # Ampere and Hopper by default; TORCH_CUDA_ARCH_LIST (read by torch's build) overrides.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        common["sources"] += cuda_sources
        return cpp_extension.CUDAExtension(
            **common,
            define_macros=[("FASTCELLS_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", CXX_STANDARD]},
        )
    return cpp_extension.CppExtension(**common, extra_compile_args={"cxx": cxx_flags})


def max_jobs():
    """Parallel compile jobs: one per core, but at most one per 4 GiB of memory (an nvcc job against
    torch's headers peaks near 3 GiB, and more jobs than memory allows only swap)."""
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = 8
    return max(1, min(os.cpu_count() or 1, int(memory_gib // 4)))


os.environ.setdefault("MAX_JOBS", str(max_jobs()))

setup(
    name="fastcells",
    packages=find_packages(include=["fastcells", "fastcells.*"])
    + ["fastcells.kernels"],
    package_dir={"fastcells.kernels": "kernels"},
    package_data={"fastcells": ["dispatch_tables/*.json"]},  # fastcells/dispatch.py's measured tables
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
