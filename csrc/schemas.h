// The op schemas of torch.ops.lmx.*, in one place: csrc/registration.cpp defines them, and the emulated CUDA test
// module (tests/cuda/emu/module.cpp) defines the same ops (plus its kernel-choice arguments) under lmx_emu.
// String-literal macros, so a caller can append arguments: "paged_attention(" LMX_PAGED_ATTENTION_ARGS ") -> ()".
//
// Quantized KV caches (int8, float8_e4m3fn; README "Quantized KV cache") add two trailing optional scale tensors
// to the three ops that touch a cache, default None (float caches). The cache-write ops write them (int8: the
// per-slot (scale, zero) rows; fp8: read-only per-head scales, still marked as possibly written so one schema
// covers both); paged_attention reads them.
#pragma once

#define LMX_ROTARY_EMBEDDING_SCHEMA                                                                 \
  "rotary_embedding(Tensor(a!) query, Tensor(b!)? key, Tensor positions, int rotary_dim, bool is_neox, " \
  "float[] rope_params, Tensor? cu_seqlens, Tensor? rope_seq_lens, bool precise) -> ()"

// The trailing scale arguments of the cache writes and of paged_attention (with their defaults).
#define LMX_KV_SCALES_WRITE_ARGS(K, V) "Tensor(" K "!)? k_scales=None, Tensor(" V "!)? v_scales=None"
#define LMX_KV_SCALES_READ_ARGS "Tensor? k_scales=None, Tensor? v_scales=None"

#define LMX_ROTARY_EMBEDDING_AND_CACHE_SCHEMA                                                                    \
  "rotary_embedding_and_cache(Tensor(a!) query, Tensor(b!) key, Tensor value, Tensor(c!) k_cache, "                \
  "Tensor(d!) v_cache, Tensor slot_mapping, Tensor positions, int rotary_dim, bool is_neox, float[] rope_params, " \
  "Tensor? cu_seqlens, Tensor? rope_seq_lens, bool precise, " LMX_KV_SCALES_WRITE_ARGS("e", "f") ") -> ()"

#define LMX_RESHAPE_AND_CACHE_SCHEMA                                                                        \
  "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping, " \
  LMX_KV_SCALES_WRITE_ARGS("c", "d") ") -> ()"

// Without the scales (a caller appending required arguments puts them before its own defaults):
// "paged_attention(" LMX_PAGED_ATTENTION_ARGS ", " LMX_KV_SCALES_READ_ARGS ") -> ()" is the op's schema.
#define LMX_PAGED_ATTENTION_ARGS                                                                          \
  "Tensor(a!) out, Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, " \
  "Tensor cu_seqlens_q, float scale, Tensor? alibi_slopes, int sliding_window"
#define LMX_PAGED_ATTENTION_SCHEMA "paged_attention(" LMX_PAGED_ATTENTION_ARGS ", " LMX_KV_SCALES_READ_ARGS ") -> ()"

// out = input · weightᵀ (+ bias); CPU: lmx's kernel for few rows; other devices: at::linear_out.
#define LMX_LINEAR_SCHEMA "linear(Tensor(a!) out, Tensor input, Tensor weight, Tensor? bias) -> ()"
