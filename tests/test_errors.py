"""Every bad input gets an exception that names the op, the argument, the expectation and what came."""

import pytest
import torch

from lmx import _C, ops, reference
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
    _expect(
        TypeError,
        r"lmx.rotary_embedding: query: expected dtype float32, bfloat16 or float16, got Double",
        ops.rotary_embedding,
        q,
        None,
        torch.arange(4),
        ROPE,
    )


def test_rotary_key_dtype_mismatch():
    _expect(
        TypeError,
        r"key: expected dtype Float, got BFloat16",
        ops.rotary_embedding,
        torch.randn(4, 2, 64),
        torch.randn(4, 1, 64, dtype=torch.bfloat16),
        torch.arange(4),
        ROPE,
    )


def test_rotary_heads_not_divisible():
    _expect(
        ValueError,
        r"key: expected num_kv_heads to divide num_q_heads \(6\), got 4",
        ops.rotary_embedding,
        torch.randn(4, 6, 64),
        torch.randn(4, 4, 64),
        torch.arange(4),
        ROPE,
    )


def test_rotary_unsupported_head_dim():
    _expect(
        ValueError,
        r"query: unsupported head_dim 72; supported: 16, 32, 64, 80, 96, 112, 128, 160, 192, 256",
        ops.rotary_embedding,
        torch.randn(4, 2, 72),
        None,
        torch.arange(4),
        RopeConfig(rotary_dim=72),
    )


def test_rotary_non_contiguous_last_dim():
    q = torch.randn(4, 64, 2).transpose(1, 2)
    _expect(
        ValueError,
        r"query: expected the last dim to be contiguous \(stride 1\), got strides \[128, 1, 2\]",
        ops.rotary_embedding,
        q,
        None,
        torch.arange(4),
        ROPE,
    )


def test_rotary_negative_position():
    _expect(
        ValueError,
        r"positions\[2\]: expected >= 0, got -5",
        ops.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.tensor([0, 1, -5, 3]),
        ROPE,
    )


def test_rotary_positions_wrong_shape_and_dtype():
    _expect(
        ValueError,
        r"positions: expected shape \[4\], got \[5\]",
        ops.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.arange(5),
        ROPE,
    )
    _expect(
        TypeError,
        r"positions: expected dtype Long, got Int",
        ops.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.arange(4, dtype=torch.int32),
        ROPE,
    )


def test_rotary_cu_seqlens_not_matching_tokens():
    _expect(
        ValueError,
        r"cu_seqlens\[-1\]: expected the number of tokens \(4\), got 6",
        ops.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.arange(4),
        ROPE,
        cu_seqlens=torch.tensor([0, 2, 6], dtype=torch.int32),
    )
    _expect(
        ValueError,
        r"cu_seqlens: expected non-decreasing values",
        ops.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.arange(4),
        ROPE,
        cu_seqlens=torch.tensor([0, 3, 2, 4], dtype=torch.int32),
    )


def test_rotary_dim_too_large():
    _expect(
        ValueError,
        r"rotary_dim: expected an even value in \[2, 64\] \(head_dim\), got 128",
        ops.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.arange(4),
        RopeConfig(rotary_dim=128),
    )


def test_rope_config_validation():
    _expect(ValueError, r"scaling_type: expected one of", RopeConfig, rotary_dim=64, scaling_type="ntk")
    _expect(ValueError, r"rotary_dim: expected a positive even int, got 63", RopeConfig, rotary_dim=63)
    _expect(
        ValueError,
        r"original_max_position_embeddings: required for scaling_type='yarn'",
        RopeConfig,
        rotary_dim=64,
        scaling_type="yarn",
        factor=2.0,
    )
    _expect(
        ValueError,
        r"rope_scaling: unsupported rope_type 'longrope'",
        RopeConfig.from_hf_config,
        {"head_dim": 64, "max_position_embeddings": 8, "rope_scaling": {"rope_type": "longrope"}},
    )
    _expect(ValueError, r"config: expected max_position_embeddings", RopeConfig.from_hf_config, {"head_dim": 64})


# --- cache -------------------------------------------------------------------------------------------------------


def test_cache_slot_out_of_range():
    k = torch.randn(3, 2, 64)
    kc, vc = torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64)
    _expect(
        ValueError,
        r"slot_mapping\[1\]: expected a slot < num_blocks \* block_size = 32 \(or negative to skip\), "
        r"got 32",
        ops.reshape_and_cache,
        k,
        k,
        kc,
        vc,
        torch.tensor([0, 32, 1]),
    )


def test_cache_wrong_heads_and_block_size():
    k = torch.randn(3, 2, 64)
    _expect(
        ValueError,
        r"k_cache: expected \[num_blocks, block_size, 2, 64\]",
        ops.reshape_and_cache,
        k,
        k,
        torch.zeros(2, 16, 4, 64),
        torch.zeros(2, 16, 4, 64),
        torch.arange(3),
    )
    _expect(
        ValueError,
        r"k_cache: expected block_size \(dim 1\) to be a power of two from 1 to 256, got 12",
        ops.reshape_and_cache,
        k,
        k,
        torch.zeros(2, 12, 2, 64),
        torch.zeros(2, 12, 2, 64),
        torch.arange(3),
    )


def test_cache_not_contiguous():
    k = torch.randn(3, 2, 64)
    kc = torch.zeros(16, 2, 2, 64).transpose(0, 1)
    _expect(
        ValueError,
        r"k_cache: expected a contiguous tensor",
        ops.reshape_and_cache,
        k,
        k,
        kc,
        kc.clone(),
        torch.arange(3),
    )


def test_fused_cache_dtype_mismatch():
    q, k = torch.randn(3, 2, 64), torch.randn(3, 2, 64)
    kc = torch.zeros(2, 16, 2, 64, dtype=torch.bfloat16)
    _expect(
        TypeError,
        r"lmx.rotary_embedding_and_cache: k_cache: expected dtype Float, got BFloat16",
        ops.rotary_embedding_and_cache,
        q,
        k,
        k.clone(),
        kc,
        kc.clone(),
        torch.arange(3),
        torch.arange(3),
        ROPE,
    )


# --- attention ---------------------------------------------------------------------------------------------------


def test_attention_block_index_out_of_range():
    q, kc, vc, bt, sl, cu = _attention_batch()
    bt[1, 0] = kc.shape[0]
    _expect(
        ValueError,
        rf"block_tables\[1, 0\]: expected a block index in \[0, {kc.shape[0]}\), got {kc.shape[0]}",
        _attend,
        q,
        kc,
        vc,
        bt,
        sl,
        cu,
    )


def test_attention_seq_len_larger_than_block_table():
    q, kc, vc, bt, sl, cu = _attention_batch()
    sl[0] = 40
    _expect(
        ValueError,
        r"seq_lens\[0\] = 40 exceeds what block_tables can hold \(max_blocks 2 x block_size 16 = 32\)",
        _attend,
        q,
        kc,
        vc,
        bt,
        sl,
        cu,
    )


def test_attention_fewer_cached_tokens_than_queries():
    q, kc, vc, bt, sl, cu = _attention_batch()
    sl[0] = 10
    _expect(ValueError, r"seq_lens\[0\]: expected >= the sequence's 20 queries", _attend, q, kc, vc, bt, sl, cu)


def test_attention_cu_seqlens_not_matching_tokens():
    q, kc, vc, bt, sl, _ = _attention_batch()
    _expect(
        ValueError,
        r"cu_seqlens_q\[-1\]: expected the number of tokens \(21\), got 20",
        _attend,
        q,
        kc,
        vc,
        bt,
        sl,
        torch.tensor([0, 19, 20], dtype=torch.int32),
    )


def test_attention_heads_not_divisible():
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(
        ValueError,
        r"k_cache: expected num_kv_heads \(dim 2\) to divide num_q_heads \(3\), got 2",
        _attend,
        q[:, :3].contiguous(),
        kc,
        vc,
        bt,
        sl,
        cu,
    )


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
    _expect(ValueError, r"alibi_slopes: expected shape \[4\], got \[2\]", _attend, *batch, alibi_slopes=torch.ones(2))


def test_cuda_tensor_mixed_with_cpu_ones():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU to make a CUDA tensor")
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(ValueError, r"block_tables: expected a tensor on cpu", _attend, q, kc, vc, bt.cuda(), sl, cu)


# --- memory: nothing an op writes may share memory with another argument, or with itself ----------------------


def test_rotary_query_and_key_same_or_overlapping():
    q = torch.randn(4, 2, 64)
    _expect(
        ValueError,
        r"lmx.rotary_embedding: query: expected memory not shared with key \(query is written in "
        r"place\), got tensors that overlap",
        ops.rotary_embedding,
        q,
        q,
        torch.arange(4),
        ROPE,
    )
    buf = torch.randn(5, 2, 64)
    _expect(
        ValueError,
        r"query: expected memory not shared with key",
        ops.rotary_embedding,
        buf[:4],
        buf[1:],
        torch.arange(4),
        ROPE,
    )
    qkv = torch.randn(4, 6, 64)  # q heads 0..3, k heads 3..4: one shared head
    _expect(
        ValueError,
        r"query: expected memory not shared with key",
        ops.rotary_embedding,
        qkv[:, :4],
        qkv[:, 3:5],
        torch.arange(4),
        ROPE,
    )


def test_rotary_interleaved_but_disjoint_views_are_accepted():
    """q and k heads interleaved in one buffer ([T, H, 2, D]) share no element: exact overlap test, no false alarm."""
    x = torch.randn(6, 2, 2, 64)
    q, k = x[:, :, 0], x[:, :, 1]
    q_ref, k_ref = q.clone(), k.clone()
    reference.rotary_embedding(q_ref, k_ref, torch.arange(6), ROPE)
    ops.rotary_embedding(q, k, torch.arange(6), ROPE)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=1e-5)
    head_major = torch.randn(2, 6, 64).transpose(0, 1)  # [T, H, D] view of an [H, T, D] buffer
    expected = head_major.clone()
    reference.rotary_embedding(expected, None, torch.arange(6), ROPE)
    ops.rotary_embedding(head_major, None, torch.arange(6), ROPE)
    torch.testing.assert_close(head_major, expected, atol=1e-5, rtol=1e-5)


def test_rotary_self_overlapping_query():
    q = torch.randn(1, 1, 64).expand(4, 2, 64)
    _expect(
        ValueError,
        r"query: expected strides that give each element its own address \(it is written in place\), "
        r"got shape \[4, 2, 64\] with strides \[0, 0, 1\]",
        ops.rotary_embedding,
        q,
        None,
        torch.arange(4),
        ROPE,
    )


def test_rotary_positions_in_the_memory_of_query():
    q = torch.rand(4, 2, 64)  # positive floats: read as int64 they are valid (huge) positions
    positions = q.view(-1).view(torch.int64)[:4]
    _expect(
        ValueError, r"query: expected memory not shared with positions", ops.rotary_embedding, q, None, positions, ROPE
    )


def test_cache_k_cache_aliasing_v_cache():
    k = torch.randn(3, 2, 64)
    kc = torch.zeros(2, 16, 2, 64)
    _expect(
        ValueError,
        r"lmx.reshape_and_cache: k_cache: expected memory not shared with v_cache",
        ops.reshape_and_cache,
        k,
        k,
        kc,
        kc,
        torch.arange(3),
    )
    buf = torch.zeros(3, 16, 2, 64)
    _expect(
        ValueError,
        r"k_cache: expected memory not shared with v_cache",
        ops.reshape_and_cache,
        k,
        k,
        buf[:2],
        buf[1:],
        torch.arange(3),
    )
    q = torch.randn(3, 4, 64)
    _expect(
        ValueError,
        r"lmx.rotary_embedding_and_cache: k_cache: expected memory not shared with v_cache",
        ops.rotary_embedding_and_cache,
        q,
        k,
        k.clone(),
        kc,
        kc,
        torch.arange(3),
        torch.arange(3),
        ROPE,
    )


def test_cache_key_inside_the_cache():
    kc, vc = torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64)
    key = kc.view(-1, 2, 64)[:3]
    _expect(
        ValueError,
        r"k_cache: expected memory not shared with key",
        ops.reshape_and_cache,
        key,
        key.clone(),
        kc,
        vc,
        torch.arange(3) + 5,
    )


def test_attention_out_aliasing_inputs():
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(
        ValueError,
        r"lmx.paged_attention: out: expected memory not shared with query",
        _attend,
        q,
        kc,
        vc,
        bt,
        sl,
        cu,
        out=q,
    )
    out = kc.view(-1, 2, 64)[: 2 * q.shape[0]].view(q.shape[0], 4, 64)
    _expect(ValueError, r"out: expected memory not shared with k_cache", _attend, q, kc, vc, bt, sl, cu, out=out)


def test_attention_k_cache_aliasing_v_cache():
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(ValueError, r"v_cache: expected memory not shared with k_cache", _attend, q, kc, kc, bt, sl, cu)


# --- degenerate shapes and values ----------------------------------------------------------------------------------


def test_attention_zero_query_heads():
    """Used to die with SIGFPE (a division by the GQA group size in the tile split)."""
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(
        ValueError,
        r"lmx.paged_attention: query: expected num_q_heads \(dim 1\) >= 1, got 0",
        _attend,
        q[:, :0],
        kc,
        vc,
        bt,
        sl,
        cu,
    )


def test_zero_kv_heads():
    q, kc, vc, bt, sl, cu = _attention_batch()
    _expect(
        ValueError,
        r"k_cache: expected num_kv_heads \(dim 2\) to divide num_q_heads \(4\), got 0",
        _attend,
        q,
        kc[:, :, :0],
        vc[:, :, :0],
        bt,
        sl,
        cu,
    )
    k = torch.randn(3, 0, 64)
    kc0 = torch.zeros(2, 16, 0, 64)
    _expect(
        ValueError,
        r"lmx.reshape_and_cache: key: expected num_kv_heads \(dim 1\) >= 1, got 0",
        ops.reshape_and_cache,
        k,
        k,
        kc0,
        kc0.clone(),
        torch.arange(3),
    )
    _expect(
        ValueError,
        r"lmx.rotary_embedding: key: expected num_kv_heads \(dim 1\) >= 1, got 0",
        ops.rotary_embedding,
        torch.randn(3, 2, 64),
        k,
        torch.arange(3),
        ROPE,
    )


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), 0.0, -0.125, 1e39, 1e-50])
def test_attention_scale_not_finite_in_fp32(scale):
    _expect(ValueError, r"scale: expected a value > 0 that is finite and nonzero in float32, got", _attend_scale, scale)


def _attend_scale(scale):
    q, kc, vc, bt, sl, cu = _attention_batch()
    return ops.paged_attention(q, kc, vc, bt, sl, cu, scale)


def test_attention_negative_ids_and_lengths():
    q, kc, vc, bt, sl, cu = _attention_batch()
    bad = bt.clone()
    bad[0, 1] = -(2**31)
    _expect(
        ValueError,
        r"block_tables\[0, 1\]: expected a block index in \[0, \d+\), got -2147483648",
        _attend,
        q,
        kc,
        vc,
        bad,
        sl,
        cu,
    )
    sl_bad = sl.clone()
    sl_bad[1] = -3
    _expect(ValueError, r"seq_lens\[1\]: expected >= 0, got -3", _attend, q, kc, vc, bt, sl_bad, cu)
    sl_bad[1] = 2**31 - 1
    _expect(
        ValueError, r"seq_lens\[1\] = 2147483647 exceeds what block_tables can hold", _attend, q, kc, vc, bt, sl_bad, cu
    )


def test_attention_alibi_not_finite():
    _expect(
        ValueError,
        r"alibi_slopes\[1\]: expected a finite value, got nan",
        _attend,
        *_attention_batch(),
        alibi_slopes=torch.tensor([0.5, float("nan"), 0.25, 0.125]),
    )


def test_empty_batches_are_no_ops():
    kc, vc = torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64)
    empty_cu = torch.zeros(1, dtype=torch.int32)
    out = ops.paged_attention(
        torch.randn(0, 4, 64),
        kc,
        vc,
        torch.zeros(0, 1, dtype=torch.int32),
        torch.zeros(0, dtype=torch.int32),
        empty_cu,
        0.125,
    )
    assert out.shape == (0, 4, 64)
    ops.rotary_embedding(
        torch.randn(0, 4, 64),
        torch.randn(0, 2, 64),
        torch.zeros(0, dtype=torch.long),
        ROPE,
        cu_seqlens=empty_cu,
        rope_seq_lens=torch.zeros(0, dtype=torch.long),
    )
    ops.reshape_and_cache(torch.randn(0, 2, 64), torch.randn(0, 2, 64), kc, vc, torch.zeros(0, dtype=torch.long))
    assert (kc == 0).all() and (vc == 0).all()


def test_sparse_tensor():
    positions = torch.arange(4).to_sparse()
    _expect(
        ValueError,
        r"positions: expected a strided tensor, got layout Sparse",
        ops.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        positions,
        ROPE,
    )


def test_meta_tensor_mixed_with_cpu_ones():
    """The dispatcher sends a call with any meta tensor to the fake implementation, which must not pass silently."""
    k = torch.randn(3, 2, 64)
    kc = torch.zeros(2, 16, 2, 64)
    _expect(
        ValueError,
        r"lmx.reshape_and_cache: v_cache: expected a tensor on cpu \(the device of the first tensor\), "
        r"got meta",
        ops.reshape_and_cache,
        k,
        k,
        kc,
        torch.zeros(2, 16, 2, 64, device="meta"),
        torch.arange(3),
    )


def test_rotary_position_int64_max_matches_reference():
    """max(position) + 1 saturates instead of overflowing to a negative length."""
    rope = RopeConfig(rotary_dim=64, scaling_type="dynamic", factor=2.0, max_position_embeddings=256)
    positions = torch.tensor([0, 2**63 - 1])
    q = torch.randn(2, 2, 64)
    expected = q.clone()
    reference.rotary_embedding(expected, None, positions, rope, precise=True)
    ops.rotary_embedding(q, None, positions, rope, precise=True)
    torch.testing.assert_close(q, expected, atol=1e-5, rtol=1e-5)


# --- rope parameters ---------------------------------------------------------------------------------------------

ROPE_FIELDS = _C.rope_param_fields()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=str)
@pytest.mark.parametrize("field", ROPE_FIELDS)
def test_rope_params_not_finite(field, bad):
    packed = list(ROPE.packed)
    packed[ROPE_FIELDS.index(field)] = bad
    q = torch.randn(4, 2, 64)
    _expect(
        ValueError,
        rf"lmx.rotary_embedding: rope_params.{field}: expected a finite value, got {bad}",
        torch.ops.lmx.rotary_embedding,
        q,
        None,
        torch.arange(4),
        64,
        True,
        packed,
        None,
        None,
        False,
    )


def _packed(rope, **fields):
    packed = list(rope.packed)
    for name, value in fields.items():
        packed[ROPE_FIELDS.index(name)] = value
    return packed


YARN = RopeConfig(rotary_dim=64, scaling_type="yarn", factor=4.0, original_max_position_embeddings=256)
LLAMA3 = RopeConfig(rotary_dim=64, scaling_type="llama3", factor=8.0, original_max_position_embeddings=256)


@pytest.mark.parametrize(
    "rope,fields,match",
    [
        (ROPE, dict(scaling_type=1.5), r"rope_params.scaling_type: expected a scaling type code 0..4, got 1.5"),
        (ROPE, dict(scaling_type=5.0), r"rope_params.scaling_type: expected a scaling type code 0..4, got 5"),
        (ROPE, dict(truncate=0.5), r"rope_params.truncate: expected 0 or 1, got 0.5"),
        (ROPE, dict(base=1.0), r"rope_params.base: expected a value > 1, got 1"),
        (ROPE, dict(max_position_embeddings=0.0), r"rope_params.max_position_embeddings: expected a value > 0, got 0"),
        (ROPE, dict(scaling_type=1.0, factor=0.0), r"rope_params.factor: expected a value > 0, got 0"),
        (YARN, dict(beta_fast=0.0), r"rope_params.beta_fast: expected a value > 0, got 0"),
        (YARN, dict(beta_slow=-1.0), r"rope_params.beta_slow: expected a value > 0, got -1"),
        (LLAMA3, dict(low_freq_factor=0.0), r"rope_params.low_freq_factor: expected a value > 0, got 0"),
        (LLAMA3, dict(high_freq_factor=1.0), r"rope_params.high_freq_factor: expected a value > low_freq_factor \(1\)"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)
def test_rope_params_rules(rope, fields, match):
    _expect(
        ValueError,
        "lmx.rotary_embedding: " + match,
        torch.ops.lmx.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.arange(4),
        64,
        True,
        _packed(rope, **fields),
        None,
        None,
        False,
    )


def test_rope_params_count_and_dynamic_rotary_dim():
    _expect(
        ValueError,
        r"rope_params: expected 11 values \(lmx.rope.RopeConfig.packed\), got 10",
        torch.ops.lmx.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.arange(4),
        64,
        True,
        ROPE.packed[:10],
        None,
        None,
        False,
    )
    dynamic = RopeConfig(rotary_dim=64, scaling_type="dynamic", factor=2.0)
    _expect(
        ValueError,
        r"rotary_dim: dynamic NTK expected a value > 2, got 2",
        torch.ops.lmx.rotary_embedding,
        torch.randn(4, 2, 64),
        None,
        torch.arange(4),
        2,
        True,
        dynamic.packed,
        None,
        None,
        False,
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(base=float("nan")), r"base: expected a finite number, got nan"),
        (dict(scaling_type="linear", factor=float("inf")), r"factor: expected a finite number, got inf"),
        (dict(max_position_embeddings=float("inf")), r"max_position_embeddings: expected a finite number, got inf"),
        (
            dict(scaling_type="yarn", factor=2.0, original_max_position_embeddings=64, attention_factor=float("nan")),
            r"attention_factor: expected a finite number, got nan",
        ),
        (
            dict(scaling_type="yarn", factor=2.0, original_max_position_embeddings=64, beta_fast=0.0),
            r"beta_fast: expected > 0 for scaling_type='yarn', got 0.0",
        ),
        (
            dict(scaling_type="llama3", factor=8.0, original_max_position_embeddings=64, low_freq_factor=0.0),
            r"low_freq_factor: expected > 0, got 0.0",
        ),
        (
            dict(rotary_dim=2, scaling_type="dynamic", factor=2.0),
            r"rotary_dim: dynamic NTK needs rotary_dim > 2, got 2",
        ),
        (dict(original_max_position_embeddings=-4), r"original_max_position_embeddings: expected > 0, got -4"),
    ],
    ids=str,
)
def test_rope_config_rejects_what_the_kernel_would(kwargs, match):
    _expect(ValueError, match, RopeConfig, **{"rotary_dim": 64, **kwargs})


def test_cache_two_tokens_in_one_slot():
    k = torch.randn(4, 2, 64)
    kc, vc = torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64)
    _expect(
        ValueError,
        r"lmx.reshape_and_cache: slot_mapping: expected distinct slots, got slot 7 for tokens 1 and 3",
        ops.reshape_and_cache,
        k,
        k,
        kc,
        vc,
        torch.tensor([-1, 7, -1, 7]),
    )
    ops.reshape_and_cache(k, k, kc, vc, torch.tensor([-1, 7, -1, 8]))  # negative slots may repeat
