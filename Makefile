# Two commands do all set-up from a fresh clone:
#   make test    create .venv if missing, build fastcells._C, run the whole test suite
#   make bench   the same set-up, then a CPU comparison of fastcells vs torch.nn vs the naive loop
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.fastcells-built
SOURCES := $(wildcard setup.py csrc/*.cpp csrc/*.h csrc/include/fastcells/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*)

.PHONY: test bench build clean

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
	$(PY) bench/compare_cpu.py

clean:
	rm -rf build *.egg-info fastcells/_C*.so $(BUILD_STAMP)
