// Validation shared by the CPU and CUDA glue (declared in checks.h).
#include "checks.h"

#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace lmx {

// ---------------------------------------------------------------------------------------------------------------
// RoPE parameters
// ---------------------------------------------------------------------------------------------------------------

// The order of rope_params. Names are RopeConfig's (lmx/rope.py packs by these names).
const std::array<RopeField, kRopeParamCount> kRopeFields = {{
    {"scaling_type", [](RopeParams& p, double v) { p.scaling = static_cast<RopeScaling>(static_cast<int>(v)); }},
    {"base", [](RopeParams& p, double v) { p.base = v; }},
    {"factor", [](RopeParams& p, double v) { p.factor = v; }},
    {"max_position_embeddings", [](RopeParams& p, double v) { p.max_position = v; }},
    {"original_max_position_embeddings", [](RopeParams& p, double v) { p.original_max_position = v; }},
    {"low_freq_factor", [](RopeParams& p, double v) { p.low_freq_factor = v; }},
    {"high_freq_factor", [](RopeParams& p, double v) { p.high_freq_factor = v; }},
    {"beta_fast", [](RopeParams& p, double v) { p.beta_fast = v; }},
    {"beta_slow", [](RopeParams& p, double v) { p.beta_slow = v; }},
    {"attention_factor", [](RopeParams& p, double v) { p.attention_factor = v; }},
    {"truncate", [](RopeParams& p, double v) { p.truncate = v != 0.0; }},
}};

namespace {

// Index of a field in kRopeFields (a programming error, not a user one, if missing).
size_t field_index(const char* name) {
  for (size_t i = 0; i < kRopeFields.size(); ++i)
    if (std::string(kRopeFields[i].name) == name) return i;
  TORCH_INTERNAL_ASSERT(false, "no rope field ", name);
}

}  // namespace

RopeParams unpack_rope(const char* op, int64_t rotary_dim, c10::ArrayRef<double> packed) {
  LMX_CHECK(static_cast<int64_t>(packed.size()) == kRopeParamCount, "rope_params: expected ", kRopeParamCount,
            " values (lmx.rope.RopeConfig.packed), got ", packed.size());
  for (size_t i = 0; i < kRopeFields.size(); ++i)
    LMX_CHECK(std::isfinite(packed[i]), "rope_params.", kRopeFields[i].name, ": expected a finite value, got ",
              packed[i]);
  auto value = [&](const char* name) { return packed[field_index(name)]; };
  const double code = value("scaling_type");
  LMX_CHECK(code >= 0 && code <= static_cast<int>(RopeScaling::kLlama3) && code == std::floor(code),
            "rope_params.scaling_type: expected a scaling type code 0..4, got ", code);
  const double truncate = value("truncate");
  LMX_CHECK(truncate == 0.0 || truncate == 1.0, "rope_params.truncate: expected 0 or 1, got ", truncate);
  RopeParams p{};
  for (size_t i = 0; i < kRopeFields.size(); ++i) kRopeFields[i].store(p, packed[i]);
  p.rotary_dim = static_cast<int>(rotary_dim);
  LMX_CHECK(p.base > 1.0, "rope_params.base: expected a value > 1, got ", p.base);
  LMX_CHECK(p.max_position > 0.0, "rope_params.max_position_embeddings: expected a value > 0, got ", p.max_position);
  LMX_CHECK(p.original_max_position > 0.0, "rope_params.original_max_position_embeddings: expected a value > 0, got ",
            p.original_max_position);
  LMX_CHECK(p.scaling == RopeScaling::kDefault || p.factor > 0.0, "rope_params.factor: expected a value > 0, got ",
            p.factor);
  if (p.scaling == RopeScaling::kDynamic)  // the base's exponent is d / (d - 2)
    LMX_CHECK(rotary_dim > 2, "rotary_dim: dynamic NTK expected a value > 2, got ", rotary_dim);
  if (p.scaling == RopeScaling::kYarn) {  // log(original_max_position / (beta * 2 pi))
    LMX_CHECK(p.beta_fast > 0.0, "rope_params.beta_fast: expected a value > 0, got ", p.beta_fast);
    LMX_CHECK(p.beta_slow > 0.0, "rope_params.beta_slow: expected a value > 0, got ", p.beta_slow);
  }
  if (p.scaling == RopeScaling::kLlama3) {  // wavelengths original / low and a ramp over (high - low)
    LMX_CHECK(p.low_freq_factor > 0.0, "rope_params.low_freq_factor: expected a value > 0, got ", p.low_freq_factor);
    LMX_CHECK(p.high_freq_factor > p.low_freq_factor, "rope_params.high_freq_factor: expected a value > ",
              "low_freq_factor (", p.low_freq_factor, "), got ", p.high_freq_factor);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

namespace {

std::string head_dims_str() {
  std::ostringstream s;
  for (size_t i = 0; i < kHeadDims.size(); ++i) s << (i ? ", " : "") << kHeadDims[i];
  return s.str();
}

}  // namespace

void check_device(const char* op, const char* name, const at::Tensor& t, const at::Device& device) {
  LMX_CHECK(t.layout() == at::kStrided, name, ": expected a strided tensor, got layout ", t.layout());
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

void check_token_head(const char* op, const char* name, const at::Tensor& t, const char* heads) {
  LMX_CHECK(t.dim() == 3, name, ": expected a 3-d tensor [num_tokens, ", heads, ", head_dim], got shape ", t.sizes());
  LMX_CHECK(t.size(1) >= 1, name, ": expected ", heads, " (dim 1) >= 1, got ", t.size(1));
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

void check_cache(const char* op, const char* name, const at::Tensor& cache, int64_t num_kv_heads, int64_t head_dim) {
  LMX_CHECK(cache.dim() == 4, name, ": expected a 4-d tensor [num_blocks, block_size, num_kv_heads, head_dim], got shape ",
            cache.sizes());
  LMX_CHECK(cache.size(2) == num_kv_heads && cache.size(3) == head_dim, name, ": expected [num_blocks, block_size, ",
            num_kv_heads, ", ", head_dim, "] to match the key heads and head_dim, got ", cache.sizes());
  const int64_t bs = cache.size(1);
  LMX_CHECK(bs >= 1 && bs <= kMaxBlockSize && (bs & (bs - 1)) == 0, name,
            ": expected block_size (dim 1) to be a power of two from 1 to ", kMaxBlockSize, ", got ", bs);
  LMX_CHECK(cache.is_contiguous(), name, ": expected a contiguous tensor, got strides ", cache.strides());
}

void check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu, int64_t num_tokens) {
  check_dtype(op, name, cu, at::kInt);
  LMX_CHECK(cu.dim() == 1 && cu.size(0) >= 1, name, ": expected shape [num_seqs + 1], got ", cu.sizes());
  LMX_CHECK(cu.is_contiguous(), name, ": expected a contiguous tensor, got strides ", cu.strides());
  if (!cu.device().is_cpu()) return;  // device-side values are the CUDA kernels' to clamp
  const int32_t* c = cu.data_ptr<int32_t>();
  const int64_t n = cu.size(0);
  LMX_CHECK(c[0] == 0, name, "[0]: expected 0, got ", c[0]);
  for (int64_t i = 1; i < n; ++i)
    LMX_CHECK(c[i] >= c[i - 1], name, ": expected non-decreasing values, got ", name, "[", i - 1, "] = ", c[i - 1],
              " > ", name, "[", i, "] = ", c[i]);
  LMX_CHECK(c[n - 1] == num_tokens, name, "[-1]: expected the number of tokens (", num_tokens, "), got ", c[n - 1]);
}

[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, "lmx.", op,
              ": got CUDA tensors, but this build of lmx._C has no CUDA kernels (built CPU-only; rebuild with a "
              "CUDA-enabled torch and nvcc, LMX_CUDA=1)");
}

// ---------------------------------------------------------------------------------------------------------------
// Quantized KV caches
// ---------------------------------------------------------------------------------------------------------------

KvFormat kv_format(at::ScalarType cache_dtype) {
  if (cache_dtype == at::kChar) return KvFormat::kInt8;
  if (cache_dtype == at::kFloat8_e4m3fn) return KvFormat::kFp8;
  return KvFormat::kFloat;
}

const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kBool: return "bool";
    case at::kFloat8_e4m3fn: return "float8_e4m3fn";
    case at::kFloat8_e5m2: return "float8_e5m2";
    default: return c10::toString(dtype);
  }
}

void check_cache_dtype(const char* op, const char* name, const at::Tensor& cache) {
  const auto dt = cache.scalar_type();
  LMX_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kChar ||
                     dt == at::kFloat8_e4m3fn,
                 name, ": expected dtype float32, bfloat16, float16, int8 or float8_e4m3fn, got ", dtype_name(dt));
}

namespace {

std::string describe(const std::optional<at::Tensor>& t) {
  if (!t) return "None";
  std::ostringstream s;
  s << "a " << dtype_name(t->scalar_type()) << " tensor of shape " << t->sizes();
  return s.str();
}

std::string shape_str(std::initializer_list<int64_t> dims) {
  std::ostringstream s;
  s << "[";
  size_t i = 0;
  for (int64_t d : dims) s << (i++ ? ", " : "") << d;
  s << "]";
  return s.str();
}

}  // namespace

void check_kv_scales(const char* op, const at::Tensor& k_cache, const std::optional<at::Tensor>& k_scales,
                     const std::optional<at::Tensor>& v_scales) {
  const KvFormat format = kv_format(k_cache.scalar_type());
  const char* cache_dtype = dtype_name(k_cache.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const std::optional<at::Tensor>&>{"k_scales", k_scales},
                                {"v_scales", v_scales}}) {
    if (format == KvFormat::kFloat) {
      LMX_CHECK(!t, name, ": expected None for the ", cache_dtype,
                " k_cache (scales belong to int8 and float8_e4m3fn caches), got ", describe(t));
      continue;
    }
    const int64_t nb = k_cache.size(0), bs = k_cache.size(1), hkv = k_cache.size(2);
    const bool int8 = format == KvFormat::kInt8;
    const std::string want = int8 ? std::string("a float32 tensor [num_blocks, block_size, num_kv_heads, 2] = ") +
                                        shape_str({nb, bs, hkv, 2})
                                  : std::string("a float32 tensor [num_kv_heads] = ") + shape_str({hkv}) +
                                        " of per-head scales";
    const bool shape_ok = t && (int8 ? (t->dim() == 4 && t->size(0) == nb && t->size(1) == bs && t->size(2) == hkv &&
                                        t->size(3) == 2)
                                     : (t->dim() == 1 && t->size(0) == hkv));
    LMX_CHECK(t && shape_ok, name, ": expected ", want, " for the ", cache_dtype, " k_cache, got ", describe(t));
    LMX_CHECK_TYPE(t->scalar_type() == at::kFloat, name, ": expected ", want, " for the ", cache_dtype,
                   " k_cache, got ", describe(t));
    check_device(op, name, *t, k_cache.device());
    LMX_CHECK(t->is_contiguous(), name, ": expected a contiguous tensor, got strides ", t->strides());
    if (!int8 && t->device().is_cpu()) {
      const float* s = t->data_ptr<float>();
      for (int64_t h = 0; h < hkv; ++h)
        LMX_CHECK(std::isfinite(s[h]) && s[h] > 0.0f, name, "[", h,
                  "]: expected a positive finite per-head fp8 scale, got ", s[h]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Memory overlap
// ---------------------------------------------------------------------------------------------------------------
//
// A strided tensor's bytes, as nested levels: level k repeats what is inside it n[k] times, s[k] bytes apart
// (outermost first); the innermost unit is a run of `run` contiguous bytes. Dims of size 1 are dropped, dims
// sorted by stride (descending), and a dim whose stride equals the run length extends the run. The layout is
// "ordered" when every level's stride is at least the footprint of what is inside it: then no two elements share
// an address and the runs are disjoint and increasing in address, so "does any run touch [x, x + len)?" is a
// descent of one index per level. That covers every layout of a dense tensor and its slices (a q or k view of a
// fused qkv, a transposed head-major buffer); what it cannot order (stride 0, interleaved dims) is treated as
// possibly overlapping.

namespace {

struct Layout {
  int64_t base = 0;  // address of the first byte
  std::vector<int64_t> n, s;
  std::vector<int64_t> footprint;  // footprint[k]: bytes spanned by level k and everything inside it
  int64_t run = 0;
  bool ordered = true;
  int64_t extent() const { return footprint.empty() ? run : footprint[0]; }
  int levels() const { return static_cast<int>(n.size()); }
  int64_t inner_footprint(int k) const { return k + 1 < levels() ? footprint[k + 1] : run; }
};

Layout layout_of(const at::Tensor& t) {
  const int64_t item = static_cast<int64_t>(t.element_size());
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride in bytes, size)
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1) dims.emplace_back(t.stride(d) * item, t.size(d));
  std::sort(dims.begin(), dims.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  Layout l;
  l.base = static_cast<int64_t>(reinterpret_cast<intptr_t>(t.data_ptr()));
  l.run = item;
  while (!dims.empty() && dims.back().first == l.run) {  // contiguous with the run: extend it
    l.run *= dims.back().second;
    dims.pop_back();
  }
  for (const auto& [stride, size] : dims) {
    l.s.push_back(stride);
    l.n.push_back(size);
  }
  l.footprint.assign(dims.size(), 0);
  for (int k = l.levels() - 1; k >= 0; --k) {
    const int64_t inner = l.inner_footprint(k);
    if (l.s[k] < inner) l.ordered = false;
    l.footprint[k] = (l.n[k] - 1) * l.s[k] + inner;
  }
  return l;
}

// Whether any run of the ordered layout `b` shares a byte with [x, x + len).
bool touches(const Layout& b, int64_t x, int64_t len) {
  const int64_t y = x + len - 1;  // the last run starting at or before y is the only candidate
  int64_t off = y - b.base;
  if (off < 0) return false;
  for (int k = 0; k < b.levels(); ++k) {
    const int64_t idx = std::min(off / b.s[k], b.n[k] - 1);
    off -= idx * b.s[k];
  }
  return y - off + b.run > x;
}

// Whether any run of `a` (any layout) touches the ordered layout `b`; subtrees of `a` whose footprint misses `b`
// are skipped. `budget` bounds the runs visited (a huge unordered `a`); when it runs out, the answer is "maybe".
bool any_touch(const Layout& a, int level, int64_t start, const Layout& b, int64_t& budget) {
  const int64_t span = level < a.levels() ? a.footprint[level] : a.run;
  if (!touches(b, start, span)) return false;
  if (level == a.levels() || --budget <= 0) return true;
  for (int64_t i = 0; i < a.n[level]; ++i)
    if (any_touch(a, level + 1, start + i * a.s[level], b, budget)) return true;
  return false;
}

}  // namespace

void check_no_internal_overlap(const char* op, const char* name, const at::Tensor& t) {
  if (t.numel() <= 1) return;
  LMX_CHECK(layout_of(t).ordered, name, ": expected strides that give each element its own address (it is written ",
            "in place), got shape ", t.sizes(), " with strides ", t.strides());
}

void check_disjoint(const char* op, const char* written, const at::Tensor& w, const char* other,
                    const at::Tensor& o) {
  if (w.numel() == 0 || o.numel() == 0 || w.device() != o.device()) return;
  const Layout a = layout_of(w), b = layout_of(o);
  if (a.base + a.extent() <= b.base || b.base + b.extent() <= a.base) return;
  int64_t budget = int64_t{1} << 22;
  bool overlap = true;  // neither layout ordered: assume the worst
  if (b.ordered)
    overlap = any_touch(a, 0, a.base, b, budget);
  else if (a.ordered)
    overlap = any_touch(b, 0, b.base, a, budget);
  LMX_CHECK(!overlap, written, ": expected memory not shared with ", other, " (", written,
            " is written in place), got tensors that overlap");
}

namespace {

struct Arg {
  const char* name;
  const at::Tensor* t;  // nullptr: an absent optional
  bool written;
};

// Each written tensor: no internal overlap, and no byte shared with any other argument.
void check_memory(const char* op, std::initializer_list<Arg> args) {
  for (const Arg& w : args) {
    if (!w.written || w.t == nullptr) continue;
    check_no_internal_overlap(op, w.name, *w.t);
    for (const Arg& o : args)
      if (&o != &w && o.t != nullptr && !(o.written && &o < &w)) check_disjoint(op, w.name, *w.t, o.name, *o.t);
  }
}

const at::Tensor* opt(const std::optional<at::Tensor>& t) { return t ? &*t : nullptr; }

// Checks shared by both rotary ops (everything but memory, which each op checks over all its arguments).
RopeInputs check_rope_args(const char* op, const at::Tensor& query, const std::optional<at::Tensor>& key,
                           const at::Tensor& positions, int64_t rotary_dim, c10::ArrayRef<double> rope_params,
                           const std::optional<at::Tensor>& cu_seqlens,
                           const std::optional<at::Tensor>& rope_seq_lens) {
  const at::Device device = query.device();
  check_device(op, "query", query, device);
  check_token_head(op, "query", query, "num_q_heads");
  check_float_dtype(op, "query", query);
  const int64_t T = query.size(0), D = query.size(2);
  check_head_dim(op, "query", D);
  if (key) {
    check_device(op, "key", *key, device);
    check_token_head(op, "key", *key, "num_kv_heads");
    check_dtype(op, "key", *key, query.scalar_type());
    LMX_CHECK(key->size(0) == T && key->size(2) == D, "key: expected shape [", T, ", num_kv_heads, ", D,
              "] (tokens and head_dim of query), got ", key->sizes());
    LMX_CHECK(query.size(1) % key->size(1) == 0, "key: expected num_kv_heads to divide num_q_heads (", query.size(1),
              "), got ", key->size(1));
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
  const RopeParams rope = unpack_rope(op, rotary_dim, rope_params);
  if (device.is_cpu()) {
    const int64_t* pos = positions.data_ptr<int64_t>();
    for (int64_t t = 0; t < T; ++t) LMX_CHECK(pos[t] >= 0, "positions[", t, "]: expected >= 0, got ", pos[t]);
    if (rope_seq_lens) {
      const int64_t* len = rope_seq_lens->data_ptr<int64_t>();
      for (int64_t b = 0; b < num_seqs; ++b)
        LMX_CHECK(len[b] >= 1, "rope_seq_lens[", b, "]: expected >= 1, got ", len[b]);
    }
  }
  return {rope, num_seqs};
}

// key / value [T, Hkv, D] and the two caches [num_blocks, block_size, Hkv, D] of one dtype.
void check_kv_and_caches(const char* op, const at::Tensor& key, const at::Tensor& value, const at::Tensor& k_cache,
                         const at::Tensor& v_cache) {
  const at::Device device = key.device();
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"value", value}, {"k_cache", k_cache},
                                {"v_cache", v_cache}})
    check_device(op, name, t, device);
  check_token_head(op, "value", value, "num_kv_heads");
  check_dtype(op, "value", value, key.scalar_type());
  LMX_CHECK(value.sizes() == key.sizes(), "value: expected the shape of key ", key.sizes(), ", got ", value.sizes());
  check_cache(op, "k_cache", k_cache, key.size(1), key.size(2));
  check_cache(op, "v_cache", v_cache, key.size(1), key.size(2));
  LMX_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache: expected the shape of k_cache ", k_cache.sizes(), ", got ",
            v_cache.sizes());
  check_cache_dtype(op, "k_cache", k_cache);
  LMX_CHECK_TYPE(v_cache.scalar_type() == k_cache.scalar_type(), "v_cache: expected the dtype of k_cache (",
                 dtype_name(k_cache.scalar_type()), "; one cache format for both), got ",
                 dtype_name(v_cache.scalar_type()));
}

// A scale tensor's memory role: int8 (scale, zero) rows are written by the cache writes, fp8 scales only read.
bool scales_written(const at::Tensor& k_cache) { return kv_format(k_cache.scalar_type()) == KvFormat::kInt8; }

// slot_mapping [T] int64; on CPU each slot < num_blocks * block_size (negative: skip the token).
void check_slots(const char* op, const at::Tensor& slot_mapping, int64_t num_tokens, const at::Tensor& k_cache) {
  check_device(op, "slot_mapping", slot_mapping, k_cache.device());
  check_vector(op, "slot_mapping", slot_mapping, at::kLong, num_tokens);
  if (!slot_mapping.device().is_cpu()) return;
  const int64_t capacity = k_cache.size(0) * k_cache.size(1);
  const int64_t* s = slot_mapping.data_ptr<int64_t>();
  std::vector<std::pair<int64_t, int64_t>> used;  // (slot, token): two tokens in one slot would race
  used.reserve(num_tokens);
  for (int64_t t = 0; t < num_tokens; ++t) {
    LMX_CHECK(s[t] < capacity, "slot_mapping[", t, "]: expected a slot < num_blocks * block_size = ", capacity,
              " (or negative to skip), got ", s[t]);
    if (s[t] >= 0) used.emplace_back(s[t], t);
  }
  std::sort(used.begin(), used.end());
  for (size_t i = 1; i < used.size(); ++i)
    LMX_CHECK(used[i].first != used[i - 1].first, "slot_mapping: expected distinct slots, got slot ", used[i].first,
              " for tokens ", used[i - 1].second, " and ", used[i].second);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Per-op checks
// ---------------------------------------------------------------------------------------------------------------

RopeInputs check_rotary_embedding(const char* op, const at::Tensor& query, const std::optional<at::Tensor>& key,
                                  const at::Tensor& positions, int64_t rotary_dim, c10::ArrayRef<double> rope_params,
                                  const std::optional<at::Tensor>& cu_seqlens,
                                  const std::optional<at::Tensor>& rope_seq_lens) {
  const RopeInputs in =
      check_rope_args(op, query, key, positions, rotary_dim, rope_params, cu_seqlens, rope_seq_lens);
  check_memory(op, {{"query", &query, true},
                    {"key", opt(key), true},
                    {"positions", &positions, false},
                    {"cu_seqlens", opt(cu_seqlens), false},
                    {"rope_seq_lens", opt(rope_seq_lens), false}});
  return in;
}

RopeInputs check_rotary_embedding_and_cache(const char* op, const at::Tensor& query, const at::Tensor& key,
                                            const at::Tensor& value, const at::Tensor& k_cache,
                                            const at::Tensor& v_cache, const at::Tensor& slot_mapping,
                                            const at::Tensor& positions, int64_t rotary_dim,
                                            c10::ArrayRef<double> rope_params,
                                            const std::optional<at::Tensor>& cu_seqlens,
                                            const std::optional<at::Tensor>& rope_seq_lens,
                                            const std::optional<at::Tensor>& k_scales,
                                            const std::optional<at::Tensor>& v_scales) {
  const RopeInputs in =
      check_rope_args(op, query, key, positions, rotary_dim, rope_params, cu_seqlens, rope_seq_lens);
  check_kv_and_caches(op, key, value, k_cache, v_cache);
  if (kv_format(k_cache.scalar_type()) == KvFormat::kFloat)  // a float cache has the activation dtype
    check_dtype(op, "k_cache", k_cache, key.scalar_type());
  check_kv_scales(op, k_cache, k_scales, v_scales);
  check_slots(op, slot_mapping, key.size(0), k_cache);
  const bool sw = scales_written(k_cache);
  check_memory(op, {{"query", &query, true},
                    {"key", &key, true},
                    {"k_cache", &k_cache, true},
                    {"v_cache", &v_cache, true},
                    {"k_scales", opt(k_scales), sw},
                    {"v_scales", opt(v_scales), sw},
                    {"value", &value, false},
                    {"slot_mapping", &slot_mapping, false},
                    {"positions", &positions, false},
                    {"cu_seqlens", opt(cu_seqlens), false},
                    {"rope_seq_lens", opt(rope_seq_lens), false}});
  return in;
}

void check_reshape_and_cache(const char* op, const at::Tensor& key, const at::Tensor& value,
                             const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& slot_mapping,
                             const std::optional<at::Tensor>& k_scales, const std::optional<at::Tensor>& v_scales) {
  check_device(op, "key", key, key.device());
  check_token_head(op, "key", key, "num_kv_heads");
  check_float_dtype(op, "key", key);
  check_head_dim(op, "key", key.size(2));
  check_kv_and_caches(op, key, value, k_cache, v_cache);
  const auto in_t = key.scalar_type(), cache_t = k_cache.scalar_type();
  LMX_CHECK_TYPE(in_t == cache_t || in_t == at::kFloat || cache_t == at::kFloat ||
                     kv_format(cache_t) != KvFormat::kFloat,
                 "k_cache: expected dtype ", in_t, ", float32, int8 or float8_e4m3fn for ", in_t, " keys, got ",
                 cache_t);
  check_kv_scales(op, k_cache, k_scales, v_scales);
  check_slots(op, slot_mapping, key.size(0), k_cache);
  const bool sw = scales_written(k_cache);
  check_memory(op, {{"k_cache", &k_cache, true},
                    {"v_cache", &v_cache, true},
                    {"k_scales", opt(k_scales), sw},
                    {"v_scales", opt(v_scales), sw},
                    {"key", &key, false},
                    {"value", &value, false},
                    {"slot_mapping", &slot_mapping, false}});
}

LinearShape check_linear(const char* op, const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  const at::Device device = input.device();
  check_device(op, "input", input, device);
  check_device(op, "weight", weight, device);
  check_device(op, "out", out, device);
  if (bias) check_device(op, "bias", *bias, device);
  check_float_dtype(op, "input", input);
  check_dtype(op, "weight", weight, input.scalar_type());
  check_dtype(op, "out", out, input.scalar_type());
  LMX_CHECK(input.dim() == 2, "input: expected a 2-d tensor [rows, in_features], got shape ", input.sizes());
  LMX_CHECK(weight.dim() == 2, "weight: expected a 2-d tensor [out_features, in_features], got shape ",
            weight.sizes());
  const int64_t M = input.size(0), K = input.size(1), N = weight.size(0);
  LMX_CHECK(weight.size(1) == K, "weight: expected in_features (dim 1) ", K, " to match input's dim 1, got shape ",
            weight.sizes());
  LMX_CHECK(weight.is_contiguous(), "weight: expected a contiguous tensor, got strides ", weight.strides());
  LMX_CHECK(K <= 1 || input.stride(1) == 1, "input: expected the last dim to be contiguous (stride 1), got strides ",
            input.strides());
  if (bias) check_vector(op, "bias", *bias, input.scalar_type(), N);
  LMX_CHECK(out.dim() == 2 && out.size(0) == M && out.size(1) == N, "out: expected shape [", M, ", ", N, "], got ",
            out.sizes());
  LMX_CHECK(N <= 1 || out.stride(1) == 1, "out: expected the last dim to be contiguous (stride 1), got strides ",
            out.strides());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"input", &input}, {"weight", &weight},
                                {"bias", bias ? &*bias : nullptr}})
    if (t != nullptr) {  // TooHard (a strided view of the same storage) is let through, as torch's own ops do
      const at::MemOverlapStatus overlap = at::get_overlap_status(out, *t);
      LMX_CHECK(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial,
                "out: expected memory that does not overlap ", name, ", got an overlapping tensor");
    }
  return {M, N, K};
}

AttentionShape check_paged_attention(const char* op, const at::Tensor& out, const at::Tensor& query,
                                     const at::Tensor& k_cache, const at::Tensor& v_cache,
                                     const at::Tensor& block_tables, const at::Tensor& seq_lens,
                                     const at::Tensor& cu_seqlens_q, double scale,
                                     const std::optional<at::Tensor>& alibi_slopes, int64_t sliding_window,
                                     const std::optional<at::Tensor>& k_scales,
                                     const std::optional<at::Tensor>& v_scales) {
  const at::Device device = query.device();
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"query", query}, {"out", out}, {"k_cache", k_cache},
        {"v_cache", v_cache}, {"block_tables", block_tables}, {"seq_lens", seq_lens}, {"cu_seqlens_q", cu_seqlens_q}})
    check_device(op, name, t, device);
  check_token_head(op, "query", query, "num_q_heads");
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
  check_cache_dtype(op, "k_cache", k_cache);
  if (kv_format(k_cache.scalar_type()) == KvFormat::kFloat || kv_format(v_cache.scalar_type()) == KvFormat::kFloat) {
    check_dtype(op, "k_cache", k_cache, query.scalar_type());
    check_dtype(op, "v_cache", v_cache, query.scalar_type());
  } else {
    LMX_CHECK_TYPE(v_cache.scalar_type() == k_cache.scalar_type(), "v_cache: expected the dtype of k_cache (",
                   dtype_name(k_cache.scalar_type()), "; one cache format for both), got ",
                   dtype_name(v_cache.scalar_type()));
  }
  check_kv_scales(op, k_cache, k_scales, v_scales);
  check_token_head(op, "out", out, "num_q_heads");
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
  // The kernels take the scale in fp32: it must stay finite and nonzero there.
  const float scale32 = static_cast<float>(scale);
  LMX_CHECK(std::isfinite(scale) && scale > 0.0 && std::isfinite(scale32) && scale32 > 0.0f,
            "scale: expected a value > 0 that is finite and nonzero in float32, got ", scale);
  LMX_CHECK(sliding_window == -1 || sliding_window > 0, "sliding_window: expected -1 (none) or > 0, got ",
            sliding_window);
  check_memory(op, {{"out", &out, true},
                    {"query", &query, false},
                    {"k_cache", &k_cache, false},
                    {"v_cache", &v_cache, false},
                    {"block_tables", &block_tables, false},
                    {"seq_lens", &seq_lens, false},
                    {"cu_seqlens_q", &cu_seqlens_q, false},
                    {"alibi_slopes", opt(alibi_slopes), false},
                    {"k_scales", opt(k_scales), false},
                    {"v_scales", opt(v_scales), false}});
  check_disjoint(op, "v_cache", v_cache, "k_cache", k_cache);  // read-only here, but two caches are two memories

  const int64_t block_size = k_cache.size(1), num_blocks = k_cache.size(0);
  if (device.is_cpu()) {
    if (alibi_slopes) {
      const float* slopes = alibi_slopes->data_ptr<float>();
      for (int64_t h = 0; h < Hq; ++h)
        LMX_CHECK(std::isfinite(slopes[h]), "alibi_slopes[", h, "]: expected a finite value, got ", slopes[h]);
    }
    const int32_t* lens = seq_lens.data_ptr<int32_t>();
    const int32_t* cu = cu_seqlens_q.data_ptr<int32_t>();
    const int32_t* table = block_tables.data_ptr<int32_t>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = cu[b + 1] - cu[b];
      LMX_CHECK(lens[b] >= 0, "seq_lens[", b, "]: expected >= 0, got ", lens[b]);
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
  return {T, B, Hq, Hkv, D, num_blocks, block_size, max_blocks, scale32, sliding_window};
}

}  // namespace lmx
