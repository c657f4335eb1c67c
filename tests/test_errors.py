"""Every bad input gets an exception that names the op, the argument, the expectation and what came."""

import pytest
import torch

from lmx import ops
from lmx.rope import RopeConfig

from .helpers import make_paged_batch

ROPE = RopeConfig(rotary_dim=64)


def _attention_batch():
    return make_paged_batch([20, 5], [20, 1], 4, 2, 64, 16, torch.float32)


def _attend(q, kc, vc, bt, sl, cu, **kw):
    return ops.paged_attention(q, kc, vc, bt, sl, cu, 0.125, **kw)


def _expect(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


# --- rotary ------------------------------------------------------------------------------------------------------


def test_rotary_wrong_dtype():
    q = torch.randn(4, 2, 64, dtype=torch.float64)
    _expect(TypeError, r"lmx.rotary_embedding: query: expected dtype float32, bfloat16 or float16, got Double",
            ops.rotary_embedding, q, None, torch.arange(4), ROPE)


def test_rotary_key_dtype_mismatch():
    _expect(TypeError, r"key: expected dtype Float, got BFloat16", ops.rotary_embedding, torch.randn(4, 2, 64),
            torch.randn(4, 1, 64, dtype=torch.bfloat16), torch.arange(4), ROPE)


def test_rotary_heads_not_divisible():
    _expect(ValueError, r"key: expected num_kv_heads to divide num_q_heads \(6\), got 4", ops.rotary_embedding,
            torch.randn(4, 6, 64), torch.randn(4, 4, 64), torch.arange(4), ROPE)


def test_rotary_unsupported_head_dim():
    _expect(ValueError, r"query: unsupported head_dim 72; supported: 16, 32, 64, 80, 96, 112, 128, 160, 192, 256",
            ops.rotary_embedding, torch.randn(4, 2, 72), None, torch.arange(4), RopeConfig(rotary_dim=72))


def test_rotary_non_contiguous_last_dim():
    q = torch.randn(4, 64, 2).transpose(1, 2)
    _expect(ValueError, r"query: expected the last dim to be contiguous \(stride 1\), got strides \[128, 1, 2\]",
            ops.rotary_embedding, q, None, torch.arange(4), ROPE)


def test_rotary_negative_position():
    _expect(ValueError, r"positions\[2\]: expected >= 0, got -5", ops.rotary_embedding, torch.randn(4, 2, 64), None,
            torch.tensor([0, 1, -5, 3]), ROPE)


def test_rotary_positions_wrong_shape_and_dtype():
    _expect(ValueError, r"positions: expected shape \[4\], got \[5\]", ops.rotary_embedding, torch.randn(4, 2, 64),
            None, torch.arange(5), ROPE)
    _expect(TypeError, r"positions: expected dtype Long, got Int", ops.rotary_embedding, torch.randn(4, 2, 64), None,
            torch.arange(4, dtype=torch.int32), ROPE)


def test_rotary_cu_seqlens_not_matching_tokens():
    _expect(ValueError, r"cu_seqlens\[-1\]: expected the number of tokens \(4\), got 6", ops.rotary_embedding,
            torch.randn(4, 2, 64), None, torch.arange(4), ROPE, cu_seqlens=torch.tensor([0, 2, 6], dtype=torch.int32))
    _expect(ValueError, r"cu_seqlens: expected non-decreasing values", ops.rotary_embedding, torch.randn(4, 2, 64),
            None, torch.arange(4), ROPE, cu_seqlens=torch.tensor([0, 3, 2, 4], dtype=torch.int32))


def test_rotary_dim_too_large():
    _expect(ValueError, r"rotary_dim: expected an even value in \[2, 64\] \(head_dim\), got 128", ops.rotary_embedding,
            torch.randn(4, 2, 64), None, torch.arange(4), RopeConfig(rotary_dim=128))


def test_rope_config_validation():
    _expect(ValueError, r"scaling_type: expected one of", RopeConfig, rotary_dim=64, scaling_type="ntk")
    _expect(ValueError, r"rotary_dim: expected a positive even int, got 63", RopeConfig, rotary_dim=63)
    _expect(ValueError, r"original_max_position_embeddings: required for scaling_type='yarn'", RopeConfig,
            rotary_dim=64, scaling_type="yarn", factor=2.0)
    _expect(ValueError, r"rope_scaling: unsupported rope_type 'longrope'", RopeConfig.from_hf_config,
            {"head_dim": 64, "max_position_embeddings": 8, "rope_scaling": {"rope_type": "longrope"}})
    _expect(ValueError, r"config: expected max_position_embeddings", RopeConfig.from_hf_config, {"head_dim": 64})


# --- cache -------------------------------------------------------------------------------------------------------


def test_cache_slot_out_of_range():
    k = torch.randn(3, 2, 64)
    kc, vc = torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64)
    _expect(ValueError, r"slot_mapping\[1\]: expected a slot < num_blocks \* block_size = 32 \(or negative to skip\), "
            r"got 32", ops.reshape_and_cache, k, k, kc, vc, torch.tensor([0, 32, 1]))


def test_cache_wrong_heads_and_block_size():
    k = torch.randn(3, 2, 64)
    _expect(ValueError, r"k_cache: expected \[num_blocks, block_size, 2, 64\]", ops.reshape_and_cache, k, k,
            torch.zeros(2, 16, 4, 64), torch.zeros(2, 16, 4, 64), torch.arange(3))
    _expect(ValueError, r"k_cache: expected block_size \(dim 1\) to be a power of two from 1 to 256, got 12",
            ops.reshape_and_cache, k, k, torch.zeros(2, 12, 2, 64), torch.zeros(2, 12, 2, 64), torch.arange(3))


def test_cache_not_contiguous():
    k = torch.randn(3, 2, 64)
    kc = torch.zeros(16, 2, 2, 64).transpose(0, 1)
    _expect(ValueError, r"k_cache: expected a contiguous tensor", ops.reshape_and_cache, k, k, kc, kc.clone(),
            torch.arange(3))


def test_fused_cache_dtype_mismatch():
    q, k = torch.randn(3, 2, 64), torch.randn(3, 2, 64)
    kc = torch.zeros(2, 16, 2, 64, dtype=torch.bfloat16)
    _expect(TypeError, r"lmx.rotary_embedding_and_cache: k_cache: expected dtype Float, got BFloat16",
            ops.rotary_embedding_and_cache, q, k, k.clone(), kc, kc.clone(), torch.arange(3), torch.arange(3), ROPE)


# --- attention ---------------------------------------------------------------------------------------------------


def test_attention_block_index_out_of_range():
    q, kc, vc, bt, sl, cu = _attention_batch()
    bt[1, 0] = kc.shape[0]
    _expect(ValueError, rf"block_tables\[1, 0\]: expected a block index in \[0, {kc.shape[0]}\), got {kc.shape[0]}",
            _attend, q, kc, vc, bt, sl, cu)


def test_attention_seq_len_larger_than_block_table():
    q, kc, vc, bt, sl, cu = _attention_batch()
    sl[0] = 40
    _expect(ValueError, r"seq_lens\[0\] = 40 exceeds what block_tables can hold \(max_blocks 2 x block_size 16 = 32\)",
            _attend, q, kc, vc, bt, sl, cu)


def test_attention_fewer_cached_tokens_than_queries():
    q, kc, vc, bt, sl, cu = _attention_batch()
    sl[0] = 10
    _expect(ValueError, r"seq_lens\[0\]: expected >= the sequence's 20 queries", _attend, q, kc, vc, bt, sl, cu)


def test_attention_cu_seqlens_not_matching_tokens():
    q, kc, vc, bt, sl, _ = _attention_batch()
    _expect(ValueError, r"cu_seqlens_q\[-1\]: expected the number of tokens \(21\), got 20", _attend, q, kc, vc, bt,
            sl, torch.tensor([0, 19, 20], dtype=torch.int32))


def test_attention_heads_not_divisible():
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(ValueError, r"k_cache: expected num_kv_heads \(dim 2\) to divide num_q_heads \(3\), got 2", _attend,
            q[:, :3].contiguous(), kc, vc, bt, sl, cu)


def test_attention_dtype_mix():
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(TypeError, r"k_cache: expected dtype BFloat16, got Float", _attend, q.bfloat16(), kc, vc, bt, sl, cu)
    _expect(TypeError, r"block_tables: expected dtype Int, got Long", _attend, q, kc, vc, bt.long(), sl, cu)


def test_attention_unsupported_head_dim():
    q, kc, vc, bt, sl, cu = make_paged_batch([5], [5], 2, 1, 72, 16, torch.float32)
    _expect(ValueError, r"query: unsupported head_dim 72", _attend, q, kc, vc, bt, sl, cu)


def test_attention_bad_window_and_slopes():
    batch = _attention_batch()
    _expect(ValueError, r"sliding_window: expected -1 \(none\) or > 0, got 0", _attend, *batch, sliding_window=0)
    _expect(ValueError, r"alibi_slopes: expected shape \[4\], got \[2\]", _attend, *batch,
            alibi_slopes=torch.ones(2))


def test_cuda_tensor_mixed_with_cpu_ones():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU to make a CUDA tensor")
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(ValueError, r"block_tables: expected a tensor on cpu", _attend, q, kc, vc, bt.cuda(), sl, cu)
