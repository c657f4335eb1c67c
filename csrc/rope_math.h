// Rotary-embedding math shared by the CPU and CUDA kernels, so the two cannot drift.
//
// Every function follows transformers' modeling_rope_utils.py operation by operation (fp32 where transformers
// uses fp32 tensors, double where it uses Python floats), with one deliberate difference: each pow is taken in
// double and rounded once to fp32. transformers' vectorised fp32 pow (Sleef, 1-ulp bound) differs from the
// correctly rounded value in about 1% of frequencies by 1 ulp; a correctly rounded pow is the same on every
// device. The dynamic-NTK base is likewise computed in double (transformers takes it in fp32 when the length
// comes from a tensor).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LMX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LMX_HOST_DEVICE inline
#endif

namespace lmx {

// Order and codes must match lmx/rope.py: SCALING_TYPES.
enum class RopeScaling : int { kDefault = 0, kLinear = 1, kDynamic = 2, kYarn = 3, kLlama3 = 4 };

// The RoPE parameters of one op call. The ops take them as `float[] rope_params`, whose order is the table
// kRopeFields (csrc/checks.cpp, exported as lmx._C.rope_param_fields(); lmx.rope packs by those names).
struct RopeParams {
  RopeScaling scaling;
  double base;                  // rope_theta
  double factor;                // linear / dynamic / yarn / llama3 factor
  double max_position;          // max_position_embeddings: dynamic rescales the base past it
  double original_max_position; // yarn / llama3: context of the base model
  double low_freq_factor;       // llama3
  double high_freq_factor;      // llama3
  double beta_fast;             // yarn
  double beta_slow;             // yarn
  double attention_factor;      // yarn: multiplies cos and sin (1 otherwise)
  bool truncate;                // yarn: floor/ceil the correction range
  int rotary_dim;               // rotated channels per head (even)
};

constexpr int kRopeParamCount = 11;
constexpr double kPi = 3.14159265358979323846;

// Dynamic NTK (transformers' _compute_dynamic_ntk_parameters):
//   base' = base * ((factor * L / max_pos) - (factor - 1)) ** (d / (d - 2))   for L > max_pos, else base.
LMX_HOST_DEVICE double dynamic_ntk_base(const RopeParams& p, int64_t seq_len) {
  if (p.scaling != RopeScaling::kDynamic || static_cast<double>(seq_len) <= p.max_position) return p.base;
  const double d = static_cast<double>(p.rotary_dim);
  const double ratio = p.factor * static_cast<double>(seq_len) / p.max_position - (p.factor - 1.0);
  return p.base * pow(ratio, d / (d - 2.0));
}

// yarn's correction range [low, high] in frequency indices (find_correction_range).
LMX_HOST_DEVICE void yarn_correction_range(const RopeParams& p, double* low, double* high) {
  const double d = static_cast<double>(p.rotary_dim);
  const double lb = 2.0 * log(p.base);
  double lo = d * log(p.original_max_position / (p.beta_fast * 2.0 * kPi)) / lb;
  double hi = d * log(p.original_max_position / (p.beta_slow * 2.0 * kPi)) / lb;
  if (p.truncate) {
    lo = floor(lo);
    hi = ceil(hi);
  }
  lo = lo > 0.0 ? lo : 0.0;
  hi = hi < d - 1.0 ? hi : d - 1.0;
  if (lo == hi) hi += 0.001;  // transformers' guard against a zero-width ramp
  *low = lo;
  *high = hi;
}

// Inverse frequency i (0 <= i < rotary_dim / 2) for a sequence whose (dynamic) base is `base`.
// `yarn_low` / `yarn_high` come from yarn_correction_range (ignored for other types).
LMX_HOST_DEVICE float inv_freq(const RopeParams& p, double base, int i, double yarn_low, double yarn_high) {
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(p.rotary_dim);  // fp32, as torch
  const float pos_freq = static_cast<float>(pow(base, static_cast<double>(exponent)));
  float inv = 1.0f / pos_freq;
  switch (p.scaling) {
    case RopeScaling::kDefault:
    case RopeScaling::kDynamic:
      return inv;
    case RopeScaling::kLinear:
      return inv / static_cast<float>(p.factor);
    case RopeScaling::kYarn: {
      const float ramp_den = static_cast<float>(yarn_high - yarn_low);
      float ramp = (static_cast<float>(i) - static_cast<float>(yarn_low)) / ramp_den;
      ramp = ramp < 0.0f ? 0.0f : (ramp > 1.0f ? 1.0f : ramp);
      const float extrapolation = 1.0f - ramp;
      const float inv_interpolation = 1.0f / (static_cast<float>(p.factor) * pos_freq);
      return inv_interpolation * (1.0f - extrapolation) + inv * extrapolation;
    }
    case RopeScaling::kLlama3: {
      const float factor = static_cast<float>(p.factor);
      const float low_wavelen = static_cast<float>(p.original_max_position / p.low_freq_factor);
      const float high_wavelen = static_cast<float>(p.original_max_position / p.high_freq_factor);
      // torch evaluates `python_scalar / tensor` as reciprocal(tensor) * scalar: two roundings, mirrored here.
      const float wavelen = (1.0f / inv) * static_cast<float>(2.0 * kPi);
      const float scaled = wavelen > low_wavelen ? inv / factor : inv;
      const float smooth = ((1.0f / wavelen) * static_cast<float>(p.original_max_position) -
                            static_cast<float>(p.low_freq_factor)) /
                           static_cast<float>(p.high_freq_factor - p.low_freq_factor);
      const float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      return medium ? smoothed : scaled;
    }
  }
  return inv;
}

// cos and sin of the angle position * inv_freq, times yarn's attention factor.
// precise = false: the angle is the fp32 product, as transformers computes it (about ulp(position) radians
// of error, 0.06 rad at 1M). precise = true: the product is taken in double and reduced modulo 2*pi first.
LMX_HOST_DEVICE void rope_cos_sin(int64_t position, float inv, float attention_factor, bool precise, float* c,
                                  float* s) {
  if (precise) {
    double angle = static_cast<double>(position) * static_cast<double>(inv);
    angle = fmod(angle, 2.0 * kPi);
    *c = static_cast<float>(cos(angle)) * attention_factor;
    *s = static_cast<float>(sin(angle)) * attention_factor;
  } else {
    const float angle = static_cast<float>(position) * inv;
    *c = cosf(angle) * attention_factor;
    *s = sinf(angle) * attention_factor;
  }
}

}  // namespace lmx
