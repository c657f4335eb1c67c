# CUDA checks that need no GPU (included by the Makefile; PY / VENV / STAMP come from it).
#   make cuda-check   nvcc compiles every csrc/cuda/*_kernels.cu for sm_80 and sm_90a; fails on register spills
#                     over the budget (tests/cuda/ptxas_check.py: 0 bytes; the CUDA-core prefill 16 bytes)
#   make cuda-emu     the same .cu files built by the host compiler with the emulator (build/cuda-emu): the C++
#                     harness under AddressSanitizer and under _FORTIFY_SOURCE, then pytest tests/cuda (every op
#                     against lmx.reference under several thread schedules)
#   make cuda-link    the whole extension with LMX_CUDA=1 against the CUDA build of torch in its own virtualenv
#                     (cached outside the checkout), built in build/cuda-link, imported with no GPU
#   make cuda-ci      all three

CUDA_HOME_DIR   ?= /usr/local/cuda-13.0
NVCC            ?= $(CUDA_HOME_DIR)/bin/nvcc
CUDA_ARCHS      ?= 8.0;9.0a
CUDA_TORCH      ?= torch==2.14.1
LMX_CUDA_VENV   ?= $(HOME)/.cache/lmx/torch-cuda-2.14.1
CUDA_EMU_BUILD  ?= build/cuda-emu
CUDA_LINK_BUILD ?= build/cuda-link
CUDA_JOBS       ?= 2
# Disk the CUDA torch virtualenv needs to be created (it is ~5.6 GB).
CUDA_VENV_MIN_KB ?= 8000000

CUDA_KERNEL_SOURCES := $(wildcard csrc/cuda/*_kernels.cu)

.PHONY: cuda-check cuda-emu cuda-emu-build cuda-link cuda-ci

cuda-check:
	@test -x $(NVCC) || { echo "cuda-check: no nvcc at $(NVCC) (set CUDA_HOME_DIR)"; exit 1; }
	python3 tests/cuda/ptxas_check.py --nvcc $(NVCC) $(foreach a,$(subst ;, ,$(CUDA_ARCHS)),--arch $(a)) \
		--jobs $(CUDA_JOBS) $(CUDA_KERNEL_SOURCES)

cuda-emu-build: $(STAMP)
	@test -f $(CUDA_HOME_DIR)/include/cuda_fp16.h || { echo "cuda-emu: no cuda_fp16.h in $(CUDA_HOME_DIR)/include"; exit 1; }
	cmake -S tests/cuda/emu -B $(CUDA_EMU_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DPython_EXECUTABLE=$(abspath $(PY)) -DLMX_CUDA_INCLUDE=$(CUDA_HOME_DIR)/include \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch;print(torch.utils.cmake_prefix_path)');$$($(PY) -c 'import pybind11;print(pybind11.get_cmake_dir())')" \
		> $(CUDA_EMU_BUILD).configure.log 2>&1 || { cat $(CUDA_EMU_BUILD).configure.log; exit 1; }
	cmake --build $(CUDA_EMU_BUILD) -j $(CUDA_JOBS)

cuda-emu: cuda-emu-build
	@ASAN_OPTIONS=detect_leaks=0 $(CUDA_EMU_BUILD)/emu_asan_harness > $(CUDA_EMU_BUILD)/asan.log 2>&1; rc=$$?; \
		grep -v "ASan doesn't fully support makecontext" $(CUDA_EMU_BUILD)/asan.log; exit $$rc
	$(CUDA_EMU_BUILD)/emu_fortify_harness
	LMX_REQUIRE_CUDA_EMU=1 LMX_CUDA_EMU_DIR=$(abspath $(CUDA_EMU_BUILD)) $(PY) -m pytest tests/cuda -q -p no:cacheprovider

# cuda-link configures as a plain `LMX_CUDA=1 pip install .` would: no CUDA_PATH / CUDA_HOME / CUDACXX /
# TORCH_CUDA_ARCH_LIST in the environment and no toolkit -D flags, whatever nvcc (a wrapper here) is on PATH;
# cmake/cuda_toolkit.cmake must find the real toolkit before find_package(Torch). CUDA_LINK_ENV= keeps the
# environment (e.g. CUDA_PATH for a toolkit outside /usr/local).
CUDA_LINK_ENV   ?= env -u CUDA_PATH -u CUDA_HOME -u CUDACXX -u TORCH_CUDA_ARCH_LIST
# The CUDA torch virtualenv is created when missing (into a temporary folder, renamed when complete), skipped with
# one line when the disk cannot hold it; the build never touches lmx/_C*.so of the checkout. The venv's CMake (4.x)
# is used: CMake 3.25 does not know how to ask nvcc 13 for C++20.
CUDA_VENV_OK = $(LMX_CUDA_VENV)/bin/python -c "import torch, pybind11, cmake, ninja; assert torch.version.cuda" 2>/dev/null

cuda-link:
	@mkdir -p $(dir $(LMX_CUDA_VENV))
	@if ! $(CUDA_VENV_OK) && [ $$(df -Pk $(dir $(LMX_CUDA_VENV)) | awk 'NR==2{print $$4}') -lt $(CUDA_VENV_MIN_KB) ]; then \
		echo "cuda-link: SKIPPED: under $$(($(CUDA_VENV_MIN_KB)/1000000)) GB free for the CUDA torch virtualenv at $(LMX_CUDA_VENV)"; \
		exit 0; \
	fi; \
	if ! $(CUDA_VENV_OK); then \
		echo "cuda-link: creating $(LMX_CUDA_VENV) ($(CUDA_TORCH), ~5.6 GB, a few minutes)"; \
		rm -rf $(LMX_CUDA_VENV).tmp && python3 -m venv $(LMX_CUDA_VENV).tmp && \
		$(LMX_CUDA_VENV).tmp/bin/python -m pip install -q $(CUDA_TORCH) setuptools wheel "cmake>=3.18" ninja \
			"pybind11>=2.12" numpy && \
		rm -rf $(LMX_CUDA_VENV) && mv $(LMX_CUDA_VENV).tmp $(LMX_CUDA_VENV) || exit 1; \
	fi; \
	set -e; vpy=$(LMX_CUDA_VENV)/bin/python; vcmake=$(LMX_CUDA_VENV)/bin/cmake; \
	prefix="$$($$vpy -c 'import torch;print(torch.utils.cmake_prefix_path)');$$($$vpy -c 'import pybind11;print(pybind11.get_cmake_dir())')"; \
	echo "cuda-link: cmake -S . -B $(CUDA_LINK_BUILD) -DLMX_CUDA=1 (torch $$($$vpy -c 'import torch;print(torch.__version__)'); $(if $(CUDA_LINK_ENV),no toolkit variables in the environment,environment as is))"; \
	$(CUDA_LINK_ENV) $$vcmake -S . -B $(CUDA_LINK_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(LMX_CUDA_VENV)/bin/ninja -DCMAKE_BUILD_TYPE=Release -DLMX_CUDA=1 -DPython_EXECUTABLE=$$vpy \
		-DLMX_OUTPUT_DIR=$(abspath $(CUDA_LINK_BUILD))/out -DCMAKE_PREFIX_PATH="$$prefix" \
		> $(CUDA_LINK_BUILD).configure.log 2>&1 || { tail -40 $(CUDA_LINK_BUILD).configure.log; exit 1; }; \
	grep -E "lmx: |PyTorch: CUDA toolkit directory" $(CUDA_LINK_BUILD).configure.log; \
	root=$$(sed -n 's/^CUDA_TOOLKIT_ROOT_DIR:[A-Z]*=//p' $(CUDA_LINK_BUILD)/CMakeCache.txt); \
	test -f "$$root/include/cuda_runtime.h" || { echo "cuda-link: toolkit root '$$root' has no include/cuda_runtime.h (an nvcc wrapper's folder?)"; exit 1; }; \
	$(CUDA_LINK_ENV) $$vcmake --build $(CUDA_LINK_BUILD) -j $(CUDA_JOBS); \
	$$vpy tests/cuda/link_check.py $(CUDA_LINK_BUILD)/out

cuda-ci: cuda-check cuda-emu cuda-link
