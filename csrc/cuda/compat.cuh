// The only switch between the two builds of the CUDA kernels: nvcc (the real thing) and a host C++ compiler with the
// test-only emulator (csrc/cuda/emu/cuda_host_emu.h). Kernel sources (*.cuh) are identical in both; they launch
// through LMX_LAUNCH and take dynamic shared memory through LMX_DYNAMIC_SMEM, never <<< >>> or extern __shared__.
// Tensor cores through nvcuda::wmma only: <mma.h> under nvcc, the emulator's wmma (emu/mma_emu.h) otherwise, for
// the fragment shapes and types that file lists (m16n16k16, fp16/bf16 inputs, fp32 accumulators).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define LMX_EMULATED 0
// Dynamic shared memory of the running kernel as a T* (128-byte aligned: wmma pointers need 32 bytes).
#define LMX_DYNAMIC_SMEM(T, name)                                 \
  extern __shared__ __align__(128) unsigned char lmx_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(lmx_dyn_smem_)
#define LMX_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#else
#include "emu/cuda_host_emu.h"
#include "emu/mma_emu.h"
#define LMX_EMULATED 1
#define LMX_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::lmx_emu::dynamic_smem())
#define LMX_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), ::lmx_emu::launch(kernel, (grid), (block), (smem), __VA_ARGS__))
#endif
