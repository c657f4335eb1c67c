// The op schemas of torch.ops.lmx.*, in one place: csrc/registration.cpp defines them, and the emulated CUDA test
// module (tests/cuda/emu/module.cpp) defines the same ops (plus its kernel-choice arguments) under lmx_emu.
// String-literal macros, so a caller can append arguments: "paged_attention(" LMX_PAGED_ATTENTION_ARGS ") -> ()".
#pragma once

#define LMX_ROTARY_EMBEDDING_SCHEMA                                                                 \
  "rotary_embedding(Tensor(a!) query, Tensor(b!)? key, Tensor positions, int rotary_dim, bool is_neox, " \
  "float[] rope_params, Tensor? cu_seqlens, Tensor? rope_seq_lens, bool precise) -> ()"

#define LMX_ROTARY_EMBEDDING_AND_CACHE_SCHEMA                                                                    \
  "rotary_embedding_and_cache(Tensor(a!) query, Tensor(b!) key, Tensor value, Tensor(c!) k_cache, "                \
  "Tensor(d!) v_cache, Tensor slot_mapping, Tensor positions, int rotary_dim, bool is_neox, float[] rope_params, " \
  "Tensor? cu_seqlens, Tensor? rope_seq_lens, bool precise) -> ()"

#define LMX_RESHAPE_AND_CACHE_SCHEMA \
  "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()"

#define LMX_PAGED_ATTENTION_ARGS                                                                          \
  "Tensor(a!) out, Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, " \
  "Tensor cu_seqlens_q, float scale, Tensor? alibi_slopes, int sliding_window"
