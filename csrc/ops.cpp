// The binding layer: validates every input, picks the device's implementation and the dtype instantiation, and
// registers the ops with the PyTorch dispatcher as torch.ops.lmx.* (CPU and CUDA keys).
//
// Every user error raises ValueError (bad value or shape) or TypeError (bad dtype) naming the op, the argument,
// what was expected and what came. Nothing unchecked reaches a kernel: a wrong input is an exception, never a
// segfault or a silent wrong answer.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <sstream>
#include <string>

#include "cpu/kernels.h"
#include "rope_math.h"

namespace lmx {
namespace {

// Head dims the kernels are built and tested for (CPU accepts any; CUDA instantiates exactly these).
constexpr std::array<int64_t, 10> kHeadDims = {16, 32, 64, 80, 96, 112, 128, 160, 192, 256};

std::string head_dims_str() {
  std::ostringstream s;
  for (size_t i = 0; i < kHeadDims.size(); ++i) s << (i ? ", " : "") << kHeadDims[i];
  return s.str();
}

// Dispatch over the activation dtypes the kernels are instantiated for (no float64).
#define LMX_DISPATCH_FLOAT(TYPE, NAME, ...)                                                          \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                           \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)                    \
                                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

#define LMX_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "lmx.", op, ": ", __VA_ARGS__)
#define LMX_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "lmx.", op, ": ", __VA_ARGS__)

void check_device(const char* op, const char* name, const at::Tensor& t, const at::Device& device) {
  LMX_CHECK(t.device() == device, name, ": expected a tensor on ", device, " (the device of the first tensor), got ",
            t.device());
}

void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype) {
  LMX_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  LMX_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, name,
                 ": expected dtype float32, bfloat16 or float16, got ", dt);
}

// A [T, H, D] activation: 3-d, last dim contiguous (token and head strides are free, e.g. a slice of a fused qkv).
void check_token_head(const char* op, const char* name, const at::Tensor& t) {
  LMX_CHECK(t.dim() == 3, name, ": expected a 3-d tensor [num_tokens, num_heads, head_dim], got shape ", t.sizes());
  LMX_CHECK(t.size(2) <= 1 || t.stride(2) == 1, name, ": expected the last dim to be contiguous (stride 1), got strides ",
            t.strides());
}

void check_head_dim(const char* op, const char* name, int64_t head_dim) {
  LMX_CHECK(std::find(kHeadDims.begin(), kHeadDims.end(), head_dim) != kHeadDims.end(), name,
            ": unsupported head_dim ", head_dim, "; supported: ", head_dims_str());
}

void check_vector(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype, int64_t size) {
  check_dtype(op, name, t, dtype);
  LMX_CHECK(t.dim() == 1 && t.size(0) == size, name, ": expected shape [", size, "], got ", t.sizes());
  LMX_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor, got strides ", t.strides());
}

// [num_blocks, block_size, Hkv, D], contiguous, block size a power of two in [1, 256].
void check_cache(const char* op, const char* name, const at::Tensor& cache, int64_t num_kv_heads, int64_t head_dim) {
  LMX_CHECK(cache.dim() == 4, name, ": expected a 4-d tensor [num_blocks, block_size, num_kv_heads, head_dim], got shape ",
            cache.sizes());
  LMX_CHECK(cache.size(2) == num_kv_heads && cache.size(3) == head_dim, name, ": expected [num_blocks, block_size, ",
            num_kv_heads, ", ", head_dim, "] to match the key heads and head_dim, got ", cache.sizes());
  const int64_t bs = cache.size(1);
  LMX_CHECK(bs >= 1 && bs <= 256 && (bs & (bs - 1)) == 0, name,
            ": expected block_size (dim 1) to be a power of two from 1 to 256, got ", bs);
  LMX_CHECK(cache.is_contiguous(), name, ": expected a contiguous tensor, got strides ", cache.strides());
}

// cu_seqlens [B + 1] int32: starts at 0, never decreases, ends at num_tokens.
void check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu, int64_t num_tokens) {
  check_dtype(op, name, cu, at::kInt);
  LMX_CHECK(cu.dim() == 1 && cu.size(0) >= 2, name, ": expected shape [num_seqs + 1] with num_seqs >= 1, got ",
            cu.sizes());
  LMX_CHECK(cu.is_contiguous(), name, ": expected a contiguous tensor");
  if (!cu.device().is_cpu()) return;  // device-side values are checked by the CUDA kernels
  const int32_t* c = cu.data_ptr<int32_t>();
  const int64_t n = cu.size(0);
  LMX_CHECK(c[0] == 0, name, "[0]: expected 0, got ", c[0]);
  for (int64_t i = 1; i < n; ++i)
    LMX_CHECK(c[i] >= c[i - 1], name, ": expected non-decreasing values, got ", name, "[", i - 1, "] = ", c[i - 1],
              " > ", name, "[", i, "] = ", c[i]);
  LMX_CHECK(c[n - 1] == num_tokens, name, "[-1]: expected the number of tokens (", num_tokens, "), got ", c[n - 1]);
}

template <typename T>
cpu::TokenHeadView<T> typed(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.size(1)};
}

template <typename T>
cpu::TokenHeadView<const T> typed_const(const at::Tensor& t) {
  return {static_cast<const T*>(t.data_ptr()), t.stride(0), t.stride(1), t.size(1)};
}

[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, "lmx.", op,
              ": got CUDA tensors, but this build of lmx._C has no CUDA kernels (built CPU-only; rebuild with a "
              "CUDA-enabled torch and nvcc, LMX_CUDA=1)");
}

// ---------------------------------------------------------------------------------------------------------------
// rotary embedding (+ fused cache write)
// ---------------------------------------------------------------------------------------------------------------

RopeParams unpack_rope(const char* op, int64_t rotary_dim, c10::ArrayRef<double> packed) {
  LMX_CHECK(static_cast<int64_t>(packed.size()) == kRopeParamCount, "rope_params: expected ", kRopeParamCount,
            " values (lmx.rope.RopeConfig.packed), got ", packed.size());
  const int code = static_cast<int>(packed[0]);
  LMX_CHECK(code >= 0 && code <= static_cast<int>(RopeScaling::kLlama3) && packed[0] == code,
            "rope_params[0]: expected a scaling type code 0..4, got ", packed[0]);
  LMX_CHECK(packed[1] > 1.0, "rope_params: expected base > 1, got ", packed[1]);
  LMX_CHECK(packed[3] > 0.0 && packed[4] > 0.0, "rope_params: expected max_position_embeddings > 0, got ", packed[3]);
  RopeParams p;
  p.scaling = static_cast<RopeScaling>(code);
  p.base = packed[1];
  p.factor = packed[2];
  p.max_position = packed[3];
  p.original_max_position = packed[4];
  p.low_freq_factor = packed[5];
  p.high_freq_factor = packed[6];
  p.beta_fast = packed[7];
  p.beta_slow = packed[8];
  p.attention_factor = packed[9];
  p.truncate = packed[10] != 0.0;
  p.rotary_dim = static_cast<int>(rotary_dim);
  LMX_CHECK(p.scaling == RopeScaling::kDefault || p.factor > 0.0, "rope_params: expected factor > 0, got ", p.factor);
  return p;
}

struct RopeInputs {
  RopeParams rope;
  int64_t num_seqs;
};

// Checks shared by rotary_embedding and rotary_embedding_and_cache.
RopeInputs check_rope(const char* op, const at::Tensor& query, const std::optional<at::Tensor>& key,
                      const at::Tensor& positions, int64_t rotary_dim, c10::ArrayRef<double> rope_params,
                      const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& rope_seq_lens) {
  check_token_head(op, "query", query);
  check_float_dtype(op, "query", query);
  const int64_t T = query.size(0), D = query.size(2);
  check_head_dim(op, "query", D);
  const at::Device device = query.device();
  if (key) {
    check_device(op, "key", *key, device);
    check_token_head(op, "key", *key);
    check_dtype(op, "key", *key, query.scalar_type());
    LMX_CHECK(key->size(0) == T && key->size(2) == D, "key: expected shape [", T, ", num_kv_heads, ", D,
              "] (tokens and head_dim of query), got ", key->sizes());
    LMX_CHECK(key->size(1) > 0 && query.size(1) % key->size(1) == 0, "key: expected num_kv_heads to divide ",
              "num_q_heads (", query.size(1), "), got ", key->size(1));
  }
  LMX_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= D, "rotary_dim: expected an even value in [2, ",
            D, "] (head_dim), got ", rotary_dim);
  check_device(op, "positions", positions, device);
  check_vector(op, "positions", positions, at::kLong, T);
  int64_t num_seqs = 1;
  if (cu_seqlens) {
    check_device(op, "cu_seqlens", *cu_seqlens, device);
    check_cu_seqlens(op, "cu_seqlens", *cu_seqlens, T);
    num_seqs = cu_seqlens->size(0) - 1;
  }
  if (rope_seq_lens) {
    check_device(op, "rope_seq_lens", *rope_seq_lens, device);
    check_vector(op, "rope_seq_lens", *rope_seq_lens, at::kLong, num_seqs);
  }
  if (device.is_cpu()) {
    const int64_t* pos = positions.data_ptr<int64_t>();
    for (int64_t t = 0; t < T; ++t) LMX_CHECK(pos[t] >= 0, "positions[", t, "]: expected >= 0, got ", pos[t]);
    if (rope_seq_lens) {
      const int64_t* len = rope_seq_lens->data_ptr<int64_t>();
      for (int64_t b = 0; b < num_seqs; ++b)
        LMX_CHECK(len[b] >= 1, "rope_seq_lens[", b, "]: expected >= 1, got ", len[b]);
    }
  }
  return {unpack_rope(op, rotary_dim, rope_params), num_seqs};
}

void check_slots(const char* op, const at::Tensor& slot_mapping, int64_t num_tokens, const at::Tensor& k_cache) {
  check_vector(op, "slot_mapping", slot_mapping, at::kLong, num_tokens);
  if (!slot_mapping.device().is_cpu()) return;
  const int64_t capacity = k_cache.size(0) * k_cache.size(1);
  const int64_t* s = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < num_tokens; ++t)
    LMX_CHECK(s[t] < capacity, "slot_mapping[", t, "]: expected a slot < num_blocks * block_size = ", capacity,
              " (or negative to skip), got ", s[t]);
}

void check_kv_pair(const char* op, const at::Tensor& key, const at::Tensor& value, const at::Tensor& k_cache,
                   const at::Tensor& v_cache) {
  const at::Device device = key.device();
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"value", value}, {"k_cache", k_cache},
                                {"v_cache", v_cache}})
    check_device(op, name, t, device);
  check_token_head(op, "value", value);
  check_dtype(op, "value", value, key.scalar_type());
  LMX_CHECK(value.sizes() == key.sizes(), "value: expected the shape of key ", key.sizes(), ", got ", value.sizes());
  check_cache(op, "k_cache", k_cache, key.size(1), key.size(2));
  check_cache(op, "v_cache", v_cache, key.size(1), key.size(2));
  LMX_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache: expected the shape of k_cache ", k_cache.sizes(), ", got ",
            v_cache.sizes());
  check_float_dtype(op, "k_cache", k_cache);
  check_dtype(op, "v_cache", v_cache, k_cache.scalar_type());
}

void rotary_embedding(at::Tensor& query, const std::optional<at::Tensor>& key, const at::Tensor& positions,
                      int64_t rotary_dim, bool is_neox, c10::ArrayRef<double> rope_params,
                      const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& rope_seq_lens,
                      bool precise) {
  const char* op = "rotary_embedding";
  const RopeInputs in = check_rope(op, query, key, positions, rotary_dim, rope_params, cu_seqlens, rope_seq_lens);
  if (query.device().is_cuda()) no_cuda(op);
  if (query.size(0) == 0) return;
  LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_rotary_embedding", [&] {
    cpu::TokenHeadView<scalar_t> k = key ? typed<scalar_t>(*key) : cpu::TokenHeadView<scalar_t>{nullptr, 0, 0, 0};
    cpu::rotary_embedding<scalar_t>(in.rope, is_neox, precise, query.size(0), query.size(2),
                                    positions.data_ptr<int64_t>(),
                                    cu_seqlens ? cu_seqlens->data_ptr<int32_t>() : nullptr,
                                    rope_seq_lens ? rope_seq_lens->data_ptr<int64_t>() : nullptr, in.num_seqs,
                                    typed<scalar_t>(query), k, {nullptr, 0, 0, 0}, nullptr, nullptr, nullptr);
  });
}

void rotary_embedding_and_cache(at::Tensor& query, at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                                at::Tensor& v_cache, const at::Tensor& slot_mapping, const at::Tensor& positions,
                                int64_t rotary_dim, bool is_neox, c10::ArrayRef<double> rope_params,
                                const std::optional<at::Tensor>& cu_seqlens,
                                const std::optional<at::Tensor>& rope_seq_lens, bool precise) {
  const char* op = "rotary_embedding_and_cache";
  const RopeInputs in = check_rope(op, query, key, positions, rotary_dim, rope_params, cu_seqlens, rope_seq_lens);
  check_kv_pair(op, key, value, k_cache, v_cache);
  check_dtype(op, "k_cache", k_cache, key.scalar_type());
  check_device(op, "slot_mapping", slot_mapping, query.device());
  check_slots(op, slot_mapping, key.size(0), k_cache);
  if (query.device().is_cuda()) no_cuda(op);
  if (query.size(0) == 0) return;
  LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_rotary_embedding_and_cache", [&] {
    cpu::rotary_embedding<scalar_t>(in.rope, is_neox, precise, query.size(0), query.size(2),
                                    positions.data_ptr<int64_t>(),
                                    cu_seqlens ? cu_seqlens->data_ptr<int32_t>() : nullptr,
                                    rope_seq_lens ? rope_seq_lens->data_ptr<int64_t>() : nullptr, in.num_seqs,
                                    typed<scalar_t>(query), typed<scalar_t>(key), typed_const<scalar_t>(value),
                                    k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
                                    slot_mapping.data_ptr<int64_t>());
  });
}

// ---------------------------------------------------------------------------------------------------------------
// KV cache write
// ---------------------------------------------------------------------------------------------------------------

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
                       const at::Tensor& slot_mapping) {
  const char* op = "reshape_and_cache";
  check_token_head(op, "key", key);
  check_float_dtype(op, "key", key);
  check_head_dim(op, "key", key.size(2));
  check_kv_pair(op, key, value, k_cache, v_cache);
  check_device(op, "slot_mapping", slot_mapping, key.device());
  check_slots(op, slot_mapping, key.size(0), k_cache);
  if (key.device().is_cuda()) no_cuda(op);
  if (key.size(0) == 0) return;
  const auto in_t = key.scalar_type(), cache_t = k_cache.scalar_type();
  LMX_CHECK_TYPE(in_t == cache_t || in_t == at::kFloat || cache_t == at::kFloat, "k_cache: expected dtype ", in_t,
                 " or float32 for ", in_t, " keys, got ", cache_t);
  LMX_DISPATCH_FLOAT(in_t, "lmx_reshape_and_cache_in", [&] {
    using in_scalar = scalar_t;
    LMX_DISPATCH_FLOAT(cache_t, "lmx_reshape_and_cache_out", [&] {
      if constexpr (std::is_same_v<in_scalar, scalar_t> || std::is_same_v<in_scalar, float> ||
                    std::is_same_v<scalar_t, float>) {
        cpu::reshape_and_cache<in_scalar, scalar_t>(key.size(0), key.size(2), typed_const<in_scalar>(key),
                                                    typed_const<in_scalar>(value), k_cache.data_ptr<scalar_t>(),
                                                    v_cache.data_ptr<scalar_t>(), slot_mapping.data_ptr<int64_t>());
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------------------------
// paged attention
// ---------------------------------------------------------------------------------------------------------------

void paged_attention(at::Tensor& out, const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& block_tables, const at::Tensor& seq_lens, const at::Tensor& cu_seqlens_q,
                     double scale, const std::optional<at::Tensor>& alibi_slopes, int64_t sliding_window) {
  const char* op = "paged_attention";
  const at::Device device = query.device();
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"out", out}, {"k_cache", k_cache}, {"v_cache", v_cache},
        {"block_tables", block_tables}, {"seq_lens", seq_lens}, {"cu_seqlens_q", cu_seqlens_q}})
    check_device(op, name, t, device);
  check_token_head(op, "query", query);
  check_float_dtype(op, "query", query);
  const int64_t T = query.size(0), Hq = query.size(1), D = query.size(2);
  check_head_dim(op, "query", D);
  LMX_CHECK(k_cache.dim() == 4, "k_cache: expected a 4-d tensor [num_blocks, block_size, num_kv_heads, head_dim], got ",
            "shape ", k_cache.sizes());
  const int64_t Hkv = k_cache.size(2);
  LMX_CHECK(Hkv > 0 && Hq % Hkv == 0, "k_cache: expected num_kv_heads (dim 2) to divide num_q_heads (", Hq, "), got ",
            Hkv);
  check_cache(op, "k_cache", k_cache, Hkv, D);
  check_cache(op, "v_cache", v_cache, Hkv, D);
  LMX_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache: expected the shape of k_cache ", k_cache.sizes(), ", got ",
            v_cache.sizes());
  check_dtype(op, "k_cache", k_cache, query.scalar_type());
  check_dtype(op, "v_cache", v_cache, query.scalar_type());
  check_token_head(op, "out", out);
  check_dtype(op, "out", out, query.scalar_type());
  LMX_CHECK(out.sizes() == query.sizes(), "out: expected the shape of query ", query.sizes(), ", got ", out.sizes());

  check_dtype(op, "block_tables", block_tables, at::kInt);
  LMX_CHECK(block_tables.dim() == 2, "block_tables: expected a 2-d tensor [num_seqs, max_blocks], got shape ",
            block_tables.sizes());
  LMX_CHECK(block_tables.is_contiguous(), "block_tables: expected a contiguous tensor, got strides ",
            block_tables.strides());
  const int64_t B = block_tables.size(0), max_blocks = block_tables.size(1);
  check_vector(op, "seq_lens", seq_lens, at::kInt, B);
  check_cu_seqlens(op, "cu_seqlens_q", cu_seqlens_q, T);
  LMX_CHECK(cu_seqlens_q.size(0) == B + 1, "cu_seqlens_q: expected shape [", B + 1,
            "] (num_seqs of block_tables + 1), got ", cu_seqlens_q.sizes());
  if (alibi_slopes) {
    check_device(op, "alibi_slopes", *alibi_slopes, device);
    check_vector(op, "alibi_slopes", *alibi_slopes, at::kFloat, Hq);
  }
  LMX_CHECK(scale > 0.0 && std::isfinite(scale), "scale: expected a finite value > 0, got ", scale);
  LMX_CHECK(sliding_window == -1 || sliding_window > 0, "sliding_window: expected -1 (none) or > 0, got ",
            sliding_window);

  const int64_t block_size = k_cache.size(1), num_blocks = k_cache.size(0);
  if (device.is_cpu()) {
    const int32_t* lens = seq_lens.data_ptr<int32_t>();
    const int32_t* cu = cu_seqlens_q.data_ptr<int32_t>();
    const int32_t* table = block_tables.data_ptr<int32_t>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = cu[b + 1] - cu[b];
      LMX_CHECK(lens[b] >= n, "seq_lens[", b, "]: expected >= the sequence's ", n,
                " queries (they are its last tokens), got ", lens[b]);
      LMX_CHECK(lens[b] <= max_blocks * block_size, "seq_lens[", b, "] = ", lens[b],
                " exceeds what block_tables can hold (max_blocks ", max_blocks, " x block_size ", block_size, " = ",
                max_blocks * block_size, ")");
      if (n == 0) continue;
      const int64_t used = (lens[b] + block_size - 1) / block_size;
      for (int64_t i = 0; i < used; ++i) {
        const int32_t blk = table[b * max_blocks + i];
        LMX_CHECK(blk >= 0 && blk < num_blocks, "block_tables[", b, ", ", i, "]: expected a block index in [0, ",
                  num_blocks, "), got ", blk);
      }
    }
  }
  if (device.is_cuda()) no_cuda(op);
  if (T == 0) return;

  cpu::AttentionParams p{B,
                         Hq,
                         Hkv,
                         D,
                         block_size,
                         max_blocks,
                         static_cast<float>(scale),
                         sliding_window,
                         block_tables.data_ptr<int32_t>(),
                         seq_lens.data_ptr<int32_t>(),
                         cu_seqlens_q.data_ptr<int32_t>(),
                         alibi_slopes ? alibi_slopes->data_ptr<float>() : nullptr};
  LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_paged_attention", [&] {
    cpu::paged_attention<scalar_t>(p, typed<scalar_t>(out), typed_const<scalar_t>(query), k_cache.data_ptr<scalar_t>(),
                                   v_cache.data_ptr<scalar_t>());
  });
}

}  // namespace
}  // namespace lmx

TORCH_LIBRARY(lmx, m) {
  m.def(
      "rotary_embedding(Tensor(a!) query, Tensor(b!)? key, Tensor positions, int rotary_dim, bool is_neox, "
      "float[] rope_params, Tensor? cu_seqlens, Tensor? rope_seq_lens, bool precise) -> ()");
  m.def(
      "rotary_embedding_and_cache(Tensor(a!) query, Tensor(b!) key, Tensor value, Tensor(c!) k_cache, "
      "Tensor(d!) v_cache, Tensor slot_mapping, Tensor positions, int rotary_dim, bool is_neox, float[] rope_params, "
      "Tensor? cu_seqlens, Tensor? rope_seq_lens, bool precise) -> ()");
  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  m.def(
      "paged_attention(Tensor(a!) out, Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
      "Tensor seq_lens, Tensor cu_seqlens_q, float scale, Tensor? alibi_slopes, int sliding_window) -> ()");
}

// One entry point per op for every device: the binding checks that all tensors share a device and routes.
#define LMX_REGISTER(key)                                                           \
  TORCH_LIBRARY_IMPL(lmx, key, m) {                                                 \
    m.impl("rotary_embedding", &lmx::rotary_embedding);                             \
    m.impl("rotary_embedding_and_cache", &lmx::rotary_embedding_and_cache);         \
    m.impl("reshape_and_cache", &lmx::reshape_and_cache);                           \
    m.impl("paged_attention", &lmx::paged_attention);                               \
  }
LMX_REGISTER(CPU)
LMX_REGISTER(CUDA)
