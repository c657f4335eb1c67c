// lmx's CUDA host emulator (test-only): runs the kernels of csrc/cuda/*.cuh, unchanged, as host C++ on the CPU.
//
// Model. One thread block runs on one OS thread; each of its CUDA threads is a fiber with its own stack.
// Fibers switch only at block barriers (__syncthreads) and warp collectives (__shfl*_sync, __ballot_sync,
// __syncwarp), so a run is deterministic for a given schedule. Blocks are spread over a small pool of OS threads.
//   schedule "rr"       resume every runnable thread in turn (warps stay close to lockstep)
//            "warp"     run one warp until all its lanes wait, then the next (maximal skew between warps:
//                        exposes missing barriers)
//            "warp-rev" the same, last warp first
//   seed != 0 shuffles the thread order (rr) or the warp order (warp modes) per block and per round.
// Dynamic shared memory is filled with 0xFF bytes before every block: read before written, it is NaN in fp32,
// fp16 and bf16. Static __shared__ is per OS thread (thread_local): kernels should use the dynamic one.
// Checked: deadlock (no runnable thread), a barrier reached after some threads exited, lanes of one collective
// using different masks or calling outside their mask, launch limits (threads per block, grid.y/z, dynamic
// shared memory over 48 KiB without cudaFuncSetAttribute, over 163 KiB at all).
// Whole-warp operations (warp_operation: the emulated nvcuda::wmma of emu/mma_emu.h) must be reached by all 32 lanes
// with the same arguments; a lane that exited, a partial warp, or lanes in different operations are reported.
// Not modelled: the memory model beyond barriers (a warp collective also orders memory here, so a missing
// __syncwarp around wmma stores goes unseen), timing, coalescing, bank conflicts, tensor cores beyond wmma's
// results, mma.sync / wgmma PTX, cp.async, TMA, clusters, inline PTX, anything under __CUDA_ARCH__.
//
// Configuration: lmx_emu::configure(schedule, seed, threads) or the environment (LMX_EMU_SCHEDULE, LMX_EMU_SEED,
// LMX_EMU_THREADS), read once.
#pragma once

// A _longjmp onto another stack aborts under _FORTIFY_SOURCE (__longjmp_chk) and confuses AddressSanitizer: both
// builds take the slower swapcontext path.
#if (defined(_FORTIFY_SOURCE) && _FORTIFY_SOURCE > 0) || defined(__SANITIZE_ADDRESS__)
#define LMX_EMU_SWAPCONTEXT 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(LMX_EMU_SWAPCONTEXT)
#define LMX_EMU_SWAPCONTEXT 1
#endif
#endif

#include <cuda_bf16.h>  // host-usable under a plain C++ compiler (from the CUDA toolkit's include dir)
#include <cuda_fp16.h>
#include <driver_types.h>
#include <vector_types.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#undef __restrict__
#define __global__
#define __device__
#define __host__
#define __shared__ thread_local
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace lmx_emu {

enum class Schedule { kRoundRobin, kWarp, kWarpReverse };

struct Config {
  Schedule schedule = Schedule::kRoundRobin;
  unsigned seed = 0;
  int threads = 0;  // OS threads running blocks; 0: min(2, hardware)
};

inline Schedule parse_schedule(const std::string& s) {
  if (s == "rr") return Schedule::kRoundRobin;
  if (s == "warp") return Schedule::kWarp;
  if (s == "warp-rev") return Schedule::kWarpReverse;
  throw std::invalid_argument("lmx_emu: schedule: expected rr, warp or warp-rev, got '" + s + "'");
}

inline Config& config() {
  static Config c = [] {
    Config r;
    if (const char* s = std::getenv("LMX_EMU_SCHEDULE")) r.schedule = parse_schedule(s);
    if (const char* s = std::getenv("LMX_EMU_SEED")) r.seed = static_cast<unsigned>(std::strtoul(s, nullptr, 10));
    if (const char* s = std::getenv("LMX_EMU_THREADS")) r.threads = std::atoi(s);
    return r;
  }();
  return c;
}

inline void configure(const std::string& schedule, unsigned seed, int threads) {
  config() = Config{parse_schedule(schedule), seed, threads};
}

// Statistics of the last launches (test visibility: a test can check that a kernel really ran N blocks).
inline std::atomic<long long> g_blocks_run{0}, g_switches{0};

enum class State : int { kRunnable, kAtBarrier, kInCollective, kExited };

struct Fiber {
  jmp_buf jb;
  ucontext_t uc;
  State state = State::kRunnable;
  bool started = false;
  uint3 tid{};
};

enum class Collective : int { kShuffle, kBallot, kWarpOp };

// A whole-warp operation (the emulated wmma, csrc/cuda/emu/mma_emu.h) and the arguments all its lanes must share.
struct WarpOp {
  const char* name;
  const void* ptr;
  unsigned ldm;
  int layout;
  uint64_t value;
  bool operator==(const WarpOp& o) const {
    return std::strcmp(name, o.name) == 0 && ptr == o.ptr && ldm == o.ldm && layout == o.layout && value == o.value;
  }
};

struct WarpState {
  uint64_t value[32];
  int source[32];
  uint64_t result[32];
  void* data[32];
  WarpOp op{"", nullptr, 0, 0, 0};
  unsigned arrived = 0, mask = 0;
  Collective kind = Collective::kShuffle;
};

struct BlockRun {
  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  std::vector<unsigned char> smem;
  char* stacks = nullptr;
  size_t stack_bytes = 0, stack_count = 0;
  jmp_buf sched_jb;
  ucontext_t sched_uc;
  int current = 0, live = 0, waiting = 0;
  const std::function<void()>* body = nullptr;
  std::string error;
  long long switches = 0;
  ~BlockRun() {
    if (stacks) munmap(stacks, stack_bytes * stack_count);
  }
};

inline thread_local BlockRun* tl_run = nullptr;

inline int linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
// Dynamic shared memory, 128-byte aligned (wmma pointers must be 32-byte aligned; nvcc's window is aligned too).
inline unsigned char* smem_base(BlockRun& r) {
  return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(r.smem.data()) + 127) & ~uintptr_t{127});
}
inline void* dynamic_smem() { return smem_base(*tl_run); }

[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error("lmx_emu: " + what); }

inline std::string where() {
  return "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ") thread " + std::to_string(linear_tid());
}

// Running fiber -> scheduler.
inline void switch_to_scheduler() {
  BlockRun& r = *tl_run;
#ifdef LMX_EMU_SWAPCONTEXT
  swapcontext(&r.fibers[r.current].uc, &r.sched_uc);
#else
  if (!_setjmp(r.fibers[r.current].jb)) _longjmp(r.sched_jb, 1);
#endif
}

inline void fiber_main() {
  BlockRun& r = *tl_run;
  try {
    (*r.body)();
  } catch (const std::exception& e) {
    if (r.error.empty()) r.error = where() + ": " + e.what();
  } catch (...) {
    if (r.error.empty()) r.error = where() + ": unknown exception";
  }
  r.fibers[r.current].state = State::kExited;
  r.live--;
  if (r.waiting > 0 && r.error.empty())
    r.error = "__syncthreads reached by " + std::to_string(r.waiting) + " threads while thread " +
              std::to_string(r.current) + " exited (a barrier must be reached by every thread of the block)";
#ifdef LMX_EMU_SWAPCONTEXT
  setcontext(&r.sched_uc);
#else
  _longjmp(r.sched_jb, 1);
#endif
}

// One warp collective: each lane of `mask` deposits a value (and, for a shuffle, the lane it reads); the last lane
// to arrive computes every lane's result and wakes the others.
inline uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int source) {
  BlockRun& r = *tl_run;
  const int t = linear_tid(), lane = t % 32, warp = t / 32;
  WarpState& w = r.warps[warp];
  if (!(mask >> lane & 1u)) fail(where() + ": lane " + std::to_string(lane) + " calls a *_sync collective outside its mask");
  const int warp_threads = std::min(32, static_cast<int>(r.fibers.size()) - warp * 32);
  if (warp_threads < 32 && (mask >> warp_threads) != 0)
    fail(where() + ": collective mask names lanes past the end of the block");
  if (w.arrived == 0) {
    w.mask = mask;
    w.kind = kind;
  } else if (w.mask != mask || w.kind != kind) {
    fail(where() + ": lanes of warp " + std::to_string(warp) + " meet in different collectives or masks" +
         (w.kind == Collective::kWarpOp ? std::string(" (others wait in ") + w.op.name + ")" : std::string()));
  }
  w.value[lane] = value;
  w.source[lane] = source;
  w.arrived |= 1u << lane;
  if ((w.arrived & mask) == mask) {
    unsigned ballot = 0;
    if (kind == Collective::kBallot)
      for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && w.value[l] != 0) ballot |= 1u << l;
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      if (kind == Collective::kBallot) {
        w.result[l] = ballot;
      } else {
        const int s = w.source[l];
        // Reading a lane outside the mask is undefined on the GPU: a recognisable garbage value here.
        w.result[l] = (s >= 0 && s < 32 && (mask >> s & 1u)) ? w.value[s] : 0xBADBADBADBADBADBull;
      }
      if (l != lane) r.fibers[warp * 32 + l].state = State::kRunnable;
    }
    w.arrived = 0;
  } else {
    r.fibers[r.current].state = State::kInCollective;
    switch_to_scheduler();
  }
  return w.result[lane];
}

// One whole-warp operation: all 32 lanes of the warp arrive with the same `op` and their own `data`; the last to
// arrive runs `run(op, data of lanes 0..31)` for all of them. Divergence is reported, not waited out.
inline void warp_operation(const WarpOp& op, void* data, void (*run)(const WarpOp&, void* const* lanes)) {
  BlockRun& r = *tl_run;
  const int t = linear_tid(), lane = t % 32, warp = t / 32;
  WarpState& w = r.warps[warp];
  const int warp_threads = std::min(32, static_cast<int>(r.fibers.size()) - warp * 32);
  if (warp_threads < 32)
    fail(where() + ": " + op.name + " needs a whole warp; warp " + std::to_string(warp) + " has " +
         std::to_string(warp_threads) + " threads");
  for (int l = 0; l < 32; ++l)
    if (r.fibers[warp * 32 + l].state == State::kExited)
      fail(where() + ": " + op.name + " called while lane " + std::to_string(l) + " of warp " + std::to_string(warp) +
           " has exited (every lane must call a warp-collective operation)");
  if (w.arrived == 0) {
    w.mask = 0xffffffffu;
    w.kind = Collective::kWarpOp;
    w.op = op;
  } else if (w.kind != Collective::kWarpOp) {
    fail(where() + ": lane " + std::to_string(lane) + " calls " + op.name + " while other lanes of warp " +
         std::to_string(warp) + " wait in a shuffle / ballot (divergent lanes)");
  } else if (!(w.op == op)) {
    fail(where() + ": lanes of warp " + std::to_string(warp) + " meet in different warp operations or arguments (" +
         w.op.name + " ptr " + std::to_string(reinterpret_cast<uintptr_t>(w.op.ptr)) + " ldm " +
         std::to_string(w.op.ldm) + " vs " + op.name + " ptr " + std::to_string(reinterpret_cast<uintptr_t>(op.ptr)) +
         " ldm " + std::to_string(op.ldm) + "): divergent lanes");
  }
  w.data[lane] = data;
  w.arrived |= 1u << lane;
  if (w.arrived == 0xffffffffu) {
    run(op, w.data);
    for (int l = 0; l < 32; ++l)
      if (l != lane) r.fibers[warp * 32 + l].state = State::kRunnable;
    w.arrived = 0;
  } else {
    r.fibers[r.current].state = State::kInCollective;
    switch_to_scheduler();
  }
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

inline void run_block(BlockRun& r, const std::function<void()>& body, dim3 block, unsigned seed, Schedule sched) {
  const int n = static_cast<int>(block.x * block.y * block.z);
  r.fibers.assign(n, Fiber{});
  r.warps.assign((n + 31) / 32, WarpState{});
  r.body = &body;
  r.live = n;
  r.waiting = 0;
  std::memset(r.smem.data(), 0xFF, r.smem.size());  // (128 spare bytes for the alignment included)
  for (int i = 0; i < n; ++i)
    r.fibers[i].tid = uint3{static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
                            static_cast<unsigned>(i / (block.x * block.y))};
  std::vector<std::vector<int>> groups;
  const int num_warps = (n + 31) / 32;
  if (sched == Schedule::kRoundRobin) {
    groups.emplace_back(n);
    std::iota(groups[0].begin(), groups[0].end(), 0);
  } else {
    for (int w = 0; w < num_warps; ++w) {
      const int ww = sched == Schedule::kWarpReverse ? num_warps - 1 - w : w;
      groups.emplace_back();
      for (int i = ww * 32; i < std::min(n, ww * 32 + 32); ++i) groups.back().push_back(i);
    }
  }
  std::mt19937 rng(seed);
  while (r.live > 0 && r.error.empty()) {
    if (seed) {
      if (sched == Schedule::kRoundRobin) std::shuffle(groups[0].begin(), groups[0].end(), rng);
      else std::shuffle(groups.begin(), groups.end(), rng);
    }
    bool progress = false;
    for (auto& group : groups) {
      for (bool again = true; again && r.error.empty();) {  // a group runs until all its threads wait or exited
        again = false;
        for (int i : group) {
          Fiber& f = r.fibers[i];
          if (f.state != State::kRunnable) continue;
          progress = again = true;
          r.current = i;
          threadIdx = f.tid;
          r.switches++;
#ifdef LMX_EMU_SWAPCONTEXT
          if (!f.started) {
            f.started = true;
            getcontext(&f.uc);
            f.uc.uc_stack.ss_sp = r.stacks + r.stack_bytes * i + 4096;  // first page of each stack: guard page
            f.uc.uc_stack.ss_size = r.stack_bytes - 4096;
            f.uc.uc_link = nullptr;
            makecontext(&f.uc, fiber_main, 0);
          }
          swapcontext(&r.sched_uc, &f.uc);
#else
          if (!_setjmp(r.sched_jb)) {
            if (f.started) _longjmp(f.jb, 1);
            f.started = true;
            getcontext(&f.uc);
            f.uc.uc_stack.ss_sp = r.stacks + r.stack_bytes * i + 4096;
            f.uc.uc_stack.ss_size = r.stack_bytes - 4096;
            f.uc.uc_link = nullptr;
            makecontext(&f.uc, fiber_main, 0);
            setcontext(&f.uc);
          }
#endif
          if (!r.error.empty()) break;
        }
      }
    }
    if (!progress && r.live > 0 && r.error.empty()) {
      int bar = 0, coll = 0;
      for (auto& f : r.fibers) bar += f.state == State::kAtBarrier, coll += f.state == State::kInCollective;
      r.error = "deadlock in block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
                std::to_string(blockIdx.z) + "): " + std::to_string(bar) + " threads at __syncthreads, " +
                std::to_string(coll) + " in warp collectives, " + std::to_string(n - r.live) + " exited";
    }
  }
}

inline std::mutex& attr_mutex() {
  static std::mutex m;
  return m;
}
inline std::map<const void*, int>& max_dynamic_smem() {
  static std::map<const void*, int> m;
  return m;
}

constexpr size_t kDefaultDynamicSmem = 48 * 1024, kMaxDynamicSmem = 163 * 1024;

// kernel<<<grid, block, smem>>>(args...)  ==  lmx_emu::launch(kernel, grid, block, smem, args...)
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) {
  const long long nthreads = 1LL * block.x * block.y * block.z;
  const long long nblocks = 1LL * grid.x * grid.y * grid.z;
  if (nthreads < 1 || nthreads > 1024 || block.z > 64)
    fail("launch: block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) +
         ") is not a valid CUDA block (1..1024 threads, z <= 64)");
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535)
    fail("launch: grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) +
         ") is not a valid CUDA grid (y, z <= 65535)");
  {
    std::lock_guard<std::mutex> g(attr_mutex());
    auto it = max_dynamic_smem().find(reinterpret_cast<const void*>(kernel));
    const size_t limit = it == max_dynamic_smem().end() ? kDefaultDynamicSmem : static_cast<size_t>(it->second);
    if (smem > limit || smem > kMaxDynamicSmem)
      fail("launch: " + std::to_string(smem) + " bytes of dynamic shared memory exceed the kernel's limit of " +
           std::to_string(limit) + " (cudaFuncSetAttribute) / the device's " + std::to_string(kMaxDynamicSmem));
  }
  std::tuple<P...> params(std::forward<A>(args)...);  // converted as a kernel call converts them
  const std::function<void()> body = [&] { std::apply(kernel, params); };
  const Config cfg = config();
  const int hw = std::max(1u, std::thread::hardware_concurrency());
  const int want = cfg.threads > 0 ? cfg.threads : std::min(2, hw);
  const int workers = static_cast<int>(std::max(1LL, std::min<long long>(nblocks, want)));
  std::atomic<long long> next{0};
  std::string error;
  std::mutex error_mu;
  auto worker = [&] {
    BlockRun r;
    r.smem.resize(smem + 128);
#ifdef LMX_EMU_SWAPCONTEXT
    r.stack_bytes = 256 * 1024;  // sanitizers and fortified builds use bigger frames
#else
    r.stack_bytes = 64 * 1024;
#endif
    r.stack_count = static_cast<size_t>(nthreads);
    void* mem = mmap(nullptr, r.stack_bytes * r.stack_count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
      std::lock_guard<std::mutex> g(error_mu);
      if (error.empty()) error = "cannot map fiber stacks";
      return;
    }
    r.stacks = static_cast<char*>(mem);
    for (size_t i = 0; i < r.stack_count; ++i) mprotect(r.stacks + r.stack_bytes * i, 4096, PROT_NONE);
    tl_run = &r;
    blockDim = block;
    gridDim = grid;
    long long ran = 0;
    for (long long id; r.error.empty() && (id = next++) < nblocks;) {
      blockIdx = uint3{static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                       static_cast<unsigned>(id / (1LL * grid.x * grid.y))};
      run_block(r, body, block, cfg.seed ? cfg.seed + static_cast<unsigned>(id) : 0u, cfg.schedule);
      ++ran;
    }
    tl_run = nullptr;
    g_blocks_run += ran;
    g_switches += r.switches;
    if (!r.error.empty()) {
      std::lock_guard<std::mutex> g(error_mu);
      if (error.empty()) error = r.error;
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < workers; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (!error.empty()) fail(error);
}

}  // namespace lmx_emu

// ---- the part of the CUDA runtime and device API the kernels use ---------------------------------------------
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    std::lock_guard<std::mutex> g(lmx_emu::attr_mutex());
    lmx_emu::max_dynamic_smem()[reinterpret_cast<const void*>(kernel)] = value;
  }
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

inline void __syncthreads() {
  lmx_emu::BlockRun& r = *lmx_emu::tl_run;
  if (r.live < static_cast<int>(r.fibers.size()))
    lmx_emu::fail(lmx_emu::where() + ": __syncthreads after " + std::to_string(r.fibers.size() - r.live) +
                  " threads of the block exited");
  if (++r.waiting == r.live) {  // the last one releases everybody
    for (auto& f : r.fibers)
      if (f.state == lmx_emu::State::kAtBarrier) f.state = lmx_emu::State::kRunnable;
    r.waiting = 0;
    return;
  }
  r.fibers[r.current].state = lmx_emu::State::kAtBarrier;
  lmx_emu::switch_to_scheduler();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  lmx_emu::warp_collective(lmx_emu::Collective::kBallot, mask, 0, 0);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = lmx_emu::linear_tid() % 32;
  return lmx_emu::from_bits<T>(lmx_emu::warp_collective(lmx_emu::Collective::kShuffle, mask, lmx_emu::to_bits(v),
                                                        (lane & ~(width - 1)) + (src & (width - 1))));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int x, int width = 32) {
  const int lane = lmx_emu::linear_tid() % 32, s = lane ^ x;
  return lmx_emu::from_bits<T>(lmx_emu::warp_collective(lmx_emu::Collective::kShuffle, mask, lmx_emu::to_bits(v),
                                                        s < (lane & ~(width - 1)) + width ? s : lane));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  const int lane = lmx_emu::linear_tid() % 32, s = lane + static_cast<int>(d);
  return lmx_emu::from_bits<T>(lmx_emu::warp_collective(lmx_emu::Collective::kShuffle, mask, lmx_emu::to_bits(v),
                                                        s < (lane & ~(width - 1)) + width ? s : lane));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  const int lane = lmx_emu::linear_tid() % 32, s = lane - static_cast<int>(d);
  return lmx_emu::from_bits<T>(lmx_emu::warp_collective(lmx_emu::Collective::kShuffle, mask, lmx_emu::to_bits(v),
                                                        s >= (lane & ~(width - 1)) ? s : lane));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(lmx_emu::warp_collective(lmx_emu::Collective::kBallot, mask, pred != 0, 0));
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
