# Two commands do all set-up from a fresh clone:
#   make test    create .venv if missing, build fastcells._C, run the whole test suite
#   make bench   the same set-up, then the quick CPU benchmark report (python -m fastcells bench --quick)
#   make gpu     on a GPU machine with a preinstalled CUDA torch: build, tests, check, full GPU
#                benchmark, all into one results folder (bench/gpu.sh; uses python3, not .venv)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.fastcells-built
SOURCES := $(wildcard setup.py csrc/*.cpp csrc/*.h csrc/include/fastcells/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*)

.PHONY: test bench gpu build clean

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

test: $(BUILD_STAMP)
	$(PY) -m pytest tests

bench: $(BUILD_STAMP)
	$(PY) -m fastcells bench --quick --device cpu

gpu:
	PYTHON=$(PYTHON) bash bench/gpu.sh $(RESULTS)

clean:
	rm -rf build *.egg-info fastcells/_C*.so $(BUILD_STAMP)
