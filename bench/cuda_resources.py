"""Registers, spills and local memory of every CUDA kernel instantiation, as ptxas reports them
(`nvcc -Xptxas -v`), for `make cuda-check`: a table per .cu file and architecture, and a failure where
a persistent kernel (csrc/cuda/persistent*.cu) spills or keeps a stack frame in local memory. A
persistent kernel holds its weight slice on chip for the whole sequence; local memory there would be
re-read every step.

    python bench/cuda_resources.py NVCC_FLAGS... -- FILE.cu...
"""

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

# Files whose kernels must neither spill nor use a stack frame.
NO_LOCAL_MEMORY = ("persistent.cu", "persistent_bwd.cu")

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


@dataclass
class Kernel:
    name: str  # mangled
    arch: str
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def local_memory(self):
        return self.stack + self.spill_stores + self.spill_loads


def parse(ptxas_log):
    """The kernels of one ptxas -v log, in order."""
    kernels = []
    for line in ptxas_log.splitlines():
        if match := _ENTRY.search(line):
            kernels.append(Kernel(match.group(1), match.group(2)))
        elif kernels and (match := _FRAME.search(line)):
            kernels[-1].stack, kernels[-1].spill_stores, kernels[-1].spill_loads = map(int, match.groups())
        elif kernels and (match := _REGISTERS.search(line)):
            kernels[-1].registers = int(match.group(1))
    return kernels


def demangle(names):
    """Readable names where c++filt is installed, else the mangled ones."""
    if not names or shutil.which("c++filt") is None:
        return list(names)
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def violations(source, kernels):
    """Messages for the kernels of ``source`` that break its local-memory rule."""
    if not source.endswith(NO_LOCAL_MEMORY):
        return []
    return [f"{source}: {name} ({k.arch}) uses local memory: {k.stack} bytes stack, "
            f"{k.spill_stores} bytes spill stores, {k.spill_loads} bytes spill loads"
            for k, name in zip(kernels, demangle([k.name for k in kernels])) if k.local_memory]


def report(source, kernels):
    lines = [f"{source}: registers, stack, spill stores/loads (bytes) per kernel"]
    for kernel, name in zip(kernels, demangle([k.name for k in kernels])):
        lines.append(f"  {kernel.arch} {kernel.registers:4d} regs {kernel.stack:5d} stack "
                     f"{kernel.spill_stores:5d}/{kernel.spill_loads:<5d} spills  {name}")
    return "\n".join(lines)


def main(argv):
    split = argv.index("--")
    flags, sources = argv[:split], argv[split + 1:]
    problems = []
    for source in sources:
        result = subprocess.run([*flags, "-c", source, "-o", "/dev/null", "-Xptxas", "-v"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return result.returncode
        kernels = parse(result.stderr + result.stdout)
        print(report(source, kernels))
        problems += violations(source, kernels)
    for problem in problems:
        print("cuda-check: " + problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
