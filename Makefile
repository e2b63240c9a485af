# Two commands do all set-up from a fresh clone:
#   make test    create .venv if missing, build fastcells._C, run the whole test suite
#   make bench   the same set-up, then the quick CPU benchmark report into bench/results/local/cpu
#   make cuda-check  compile every csrc/cuda/*.cu with nvcc for sm_80 and sm_90, warnings as errors, and
#                print each kernel's registers and spills (part of make test; skipped without nvcc)
#   make gpu     on a GPU machine with a preinstalled CUDA torch: build, tests, check, full GPU
#                benchmark, all into one results folder (bench/gpu.sh; uses python3, not .venv)
#   make gpu-carry  download what bench/gpu.sh needs but a GPU machine without network lacks
#                (compute-sanitizer's wheel) into .gpu-carry/, to send along with the working tree
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.fastcells-built
SOURCES := $(wildcard setup.py csrc/*.cpp csrc/*.h csrc/include/fastcells/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cpu/*.inc csrc/cuda/*)

.PHONY: test bench gpu gpu-carry build clean cuda-check

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Build isolation is off: the extension must compile against the torch installed above.
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILD_STAMP)

test: $(BUILD_STAMP) cuda-check
	$(PY) -m pytest tests

# The kernels include no torch header, so this needs nvcc only (seconds per file, nothing runs).
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
# The -D flags are those torch's CUDA extension build adds (no implicit half/bfloat16 conversions);
# -std is setup.py's (CXX_STANDARD).
NVCC_COMMON := -std=c++20 -Icsrc/include -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
	-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
	-D__CUDA_NO_HALF2_OPERATORS__
NVCC_FLAGS := $(NVCC_COMMON) $(foreach arch,$(CUDA_ARCHS),-gencode arch=compute_$(arch),code=sm_$(arch))
# It prints every kernel's registers, stack and spills (ptxas -v) and fails where a persistent kernel
# uses local memory (bench/cuda_resources.py; standard library only, so any python3 runs it), then
# compiles the GPU-only phase probe of the persistent forward kernel (bench/persistent_probe.cu, sm_90).
cuda-check:
	@if command -v $(NVCC) >/dev/null; then \
	  echo "cuda-check: $(NVCC) -c csrc/cuda/*.cu (sm $(CUDA_ARCHS))"; \
	  $(PYTHON) bench/cuda_resources.py $(NVCC) $(NVCC_FLAGS) -- csrc/cuda/*.cu || exit 1; \
	  echo "cuda-check: $(NVCC) bench/persistent_probe.cu (sm 90)"; \
	  $(NVCC) $(NVCC_COMMON) -gencode arch=compute_90,code=sm_90 -Icsrc/cuda -c bench/persistent_probe.cu \
	    -o /dev/null || exit 1; \
	else \
	  echo "cuda-check: skipped (nvcc not found; the CUDA kernels are not compiled here)"; \
	fi

# Into bench/results/local/ (not tracked), so a run never rewrites a committed report; to refresh one,
# run python -m fastcells bench --quick --device cpu --out bench/results/<name>.
bench: $(BUILD_STAMP)
	$(PY) -m fastcells bench --quick --device cpu --out bench/results/local/cpu

gpu:
	PYTHON=$(PYTHON) bash bench/gpu.sh $(RESULTS)

# compute-sanitizer of CUDA 13.0, the toolkit of the GPU machines' torch (14 MB).
gpu-carry: | $(PY)
	$(PY) -m pip download --quiet --no-deps -d .gpu-carry nvidia-cuda-sanitizer-api==13.0.85

clean:
	rm -rf build *.egg-info fastcells/_C*.so $(BUILD_STAMP)
