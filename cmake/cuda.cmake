# CUDA side of the lmx build (csrc/cuda), included by CMakeLists.txt before the targets. Sets
#   LMX_WITH_CUDA      ON when the CUDA kernels are built into _C (then also the compile definition LMX_WITH_CUDA)
#   LMX_CUDA_SOURCES   csrc/cuda/*_kernels.cu + csrc/cuda/ops_cuda.cpp, or empty
# LMX_CUDA (cache variable of CMakeLists.txt): auto (build them when torch has CUDA and nvcc is found), 0, 1 (required).
#
# The traps of a torch CUDA extension (all five are needed; see csrc/cuda and `make cuda-link`):
#  1, 2. the real toolkit root (not an nvcc wrapper's folder) and TORCH_CUDA_ARCH_LIST: cmake/cuda_toolkit.cmake,
#     which CMakeLists.txt includes before find_package(Torch) (torch reads both inside it).
#  3. torch 2.14's headers need C++20 (torch 2.13's compile as C++20 too).
#  4. ATen/cuda/CUDAContext.h pulls cusparse.h: the glue includes only c10/cuda/CUDAGuard.h and CUDAStream.h.
#  5. CMake would link cudart_static next to torch's shared cudart: CUDA_RUNTIME_LIBRARY Shared.
# rotary_kernels.cu is built with --fmad=false: the CPU kernels and the reference do not contract a * b + c.

if(NOT DEFINED LMX_CUDA_ARCHS)
  include("${CMAKE_CURRENT_LIST_DIR}/cuda_toolkit.cmake")  # a CMakeLists.txt that did not include it first
endif()
set(CMAKE_CUDA_ARCHITECTURES OFF)
# ---- 3. C++20 for torch >= 2.14 (its headers refuse C++17) ----------------------------------------------------
if(LMX_TORCH_VERSION VERSION_GREATER_EQUAL "2.14")
  set(CMAKE_CXX_STANDARD 20)
endif()

file(GLOB _lmx_cu CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*_kernels.cu")
set(LMX_WITH_CUDA OFF)
set(_why "LMX_CUDA=0")
if(NOT LMX_CUDA STREQUAL "0")
  set(_why "")
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT TORCH_CUDA_LIBRARIES AND NOT TARGET torch_cuda)
    set(_why "torch ${LMX_TORCH_VERSION} has no CUDA (a CPU build of torch)")
  elseif(NOT CMAKE_CUDA_COMPILER)
    set(_why "nvcc not found (set CUDA_PATH to the CUDA toolkit)")
  elseif(NOT _lmx_cu)
    set(_why "no CUDA kernels in csrc/cuda")
  else()
    set(LMX_WITH_CUDA ON)
  endif()
  if(LMX_CUDA STREQUAL "1" AND NOT LMX_WITH_CUDA)
    message(FATAL_ERROR "LMX_CUDA=1 but the CUDA kernels cannot be built: ${_why}")
  endif()
endif()

if(LMX_WITH_CUDA)
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  set(CMAKE_CUDA_EXTENSIONS OFF)  # nvcc has no gnu++20
  set(LMX_CUDA_SOURCES ${_lmx_cu} "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/ops_cuda.cpp")
  set_source_files_properties("${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/rotary_kernels.cu" PROPERTIES COMPILE_OPTIONS
                              "--fmad=false")
  # 5. one shared cudart (torch's), applied to every target that links CUDA objects.
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
  # nvcc: no host-compiler flags meant for C++ only; at most two threads for the per-arch passes.
  set(CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS} --threads=2")
  message(STATUS "lmx: building CPU and CUDA kernels (TORCH_CUDA_ARCH_LIST=$ENV{TORCH_CUDA_ARCH_LIST}, "
                 "toolkit ${CUDA_TOOLKIT_ROOT_DIR})")
else()
  message(STATUS "lmx: CPU-only build (${_why})")
  set(LMX_CUDA_SOURCES "")
endif()
