# The CUDA toolkit and architectures for the lmx build, included by CMakeLists.txt BEFORE find_package(Torch):
# torch's CMake config reads both inside find_package(Torch) (its FindCUDA takes CUDA_TOOLKIT_ROOT_DIR, then
# enable_language(CUDA) takes CMAKE_CUDA_COMPILER; its arch flags come from TORCH_CUDA_ARCH_LIST), so setting them
# afterwards is too late. With this file first, a plain `LMX_CUDA=1 pip install .` works with no CUDA_PATH and a
# wrapper nvcc on PATH. The rest of the CUDA build (LMX_WITH_CUDA, sources, flags) is cmake/cuda.cmake.
#
#  1. torch's FindCUDA takes the folder of the first `nvcc` on PATH as the toolkit root; a wrapper script
#     (/usr/local/bin/nvcc) gives the wrong one. The real toolkit: CUDA_TOOLKIT_ROOT_DIR if given, else CUDA_PATH /
#     CUDA_HOME, else /usr/local/cuda, else the newest /usr/local/cuda-*; the first with bin/nvcc and
#     include/cuda_runtime.h.
#  2. without TORCH_CUDA_ARCH_LIST torch picks compute_50, which nvcc 13 rejects: LMX_CUDA_ARCHS ("8.0;9.0a")
#     unless the environment sets one, and CMAKE_CUDA_ARCHITECTURES OFF so that CMake adds no -arch of its own.
# Nothing happens with LMX_CUDA=0.

set(LMX_CUDA_ARCHS "8.0;9.0a" CACHE STRING "TORCH_CUDA_ARCH_LIST when the environment does not set one")

if(NOT LMX_CUDA STREQUAL "0")
  # ---- 1. the real toolkit --------------------------------------------------------------------------------------
  if(NOT CUDA_TOOLKIT_ROOT_DIR)
    file(GLOB _lmx_versioned LIST_DIRECTORIES true "/usr/local/cuda-*")
    list(SORT _lmx_versioned COMPARE NATURAL ORDER DESCENDING)
    foreach(_root "$ENV{CUDA_PATH}" "$ENV{CUDA_HOME}" /usr/local/cuda ${_lmx_versioned})
      if(_root AND EXISTS "${_root}/bin/nvcc" AND EXISTS "${_root}/include/cuda_runtime.h")
        get_filename_component(_root "${_root}" REALPATH)
        set(CUDA_TOOLKIT_ROOT_DIR "${_root}" CACHE PATH "CUDA toolkit (the real one, not an nvcc wrapper's folder)")
        break()
      endif()
    endforeach()
  endif()
  if(CUDA_TOOLKIT_ROOT_DIR AND NOT CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_COMPILER "${CUDA_TOOLKIT_ROOT_DIR}/bin/nvcc" CACHE FILEPATH "nvcc of CUDA_TOOLKIT_ROOT_DIR")
  endif()
  # ---- 2. architectures ----------------------------------------------------------------------------------------
  if("$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
    set(ENV{TORCH_CUDA_ARCH_LIST} "${LMX_CUDA_ARCHS}")
  endif()
  set(CMAKE_CUDA_ARCHITECTURES OFF)
endif()
