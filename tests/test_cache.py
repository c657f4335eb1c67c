"""lmx.ops.reshape_and_cache and rotary_embedding_and_cache against lmx.reference."""

import pytest
import torch

from lmx import ops, reference
from lmx.rope import RopeConfig

from .helpers import nan_caches, random_slots, rope_tol

BLOCK_SIZES = [1, 16, 256]
HEAD_DIMS = [64, 80, 96, 128, 256]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_and_cache(block_size, head_dim, dtype):
    T, Hkv, num_blocks = 37, 2, max(2, 64 // block_size + 1)
    key = torch.randn(T, Hkv, head_dim, dtype=dtype)
    value = torch.randn(T, Hkv, head_dim, dtype=dtype)
    slots = random_slots(T, num_blocks, block_size)
    k_ref, v_ref = nan_caches(num_blocks, block_size, Hkv, head_dim, dtype)
    k_cache, v_cache = k_ref.clone(), v_ref.clone()
    reference.reshape_and_cache(key, value, k_ref, v_ref, slots)
    ops.reshape_and_cache(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache.nan_to_num(7.0), k_ref.nan_to_num(7.0))  # skipped slots stay NaN
    assert torch.equal(v_cache.nan_to_num(7.0), v_ref.nan_to_num(7.0))


@pytest.mark.parametrize(
    "in_dtype,cache_dtype",
    [
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float16),
        (torch.float16, torch.float32),
    ],
)
def test_reshape_and_cache_converts(in_dtype, cache_dtype):
    key = torch.randn(9, 3, 64, dtype=in_dtype)
    k_cache, v_cache = nan_caches(4, 16, 3, 64, cache_dtype)
    slots = torch.arange(9) * 3
    ops.reshape_and_cache(key, key, k_cache, v_cache, slots)
    flat = k_cache.view(-1, 3, 64)
    assert torch.equal(flat[slots], key.to(cache_dtype))


def test_reshape_and_cache_reads_strided_views():
    T, Hq, Hkv, D = 10, 4, 2, 64
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D)
    key = qkv[:, Hq * D : (Hq + Hkv) * D].view(T, Hkv, D)
    value = qkv[:, (Hq + Hkv) * D :].view(T, Hkv, D)
    k_cache, v_cache = nan_caches(2, 16, Hkv, D, torch.float32)
    ops.reshape_and_cache(key, value, k_cache, v_cache, torch.arange(T))
    assert torch.equal(k_cache.view(-1, Hkv, D)[:T], key)
    assert torch.equal(v_cache.view(-1, Hkv, D)[:T], value)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("scaling", ["default", "dynamic"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_rotary_and_cache(block_size, scaling, dtype):
    T, Hq, Hkv, D = 29, 8, 2, 128
    rope = RopeConfig(
        rotary_dim=D, scaling_type=scaling, factor=2.0 if scaling == "dynamic" else 1.0, max_position_embeddings=8
    )
    num_blocks = max(2, 64 // block_size + 1)
    q, k, v = (torch.randn(T, h, D, dtype=dtype) for h in (Hq, Hkv, Hkv))
    slots = random_slots(T, num_blocks, block_size)
    cu = torch.tensor([0, 10, 29], dtype=torch.int32)
    positions = torch.cat([torch.arange(10), torch.arange(100, 119)])
    kwargs = dict(cu_seqlens=cu, rope_seq_lens=torch.tensor([10, 200]))
    q_ref, k_ref = q.clone(), k.clone()
    kc_ref, vc_ref = nan_caches(num_blocks, block_size, Hkv, D, dtype)
    kc, vc = kc_ref.clone(), vc_ref.clone()
    reference.rotary_embedding_and_cache(q_ref, k_ref, v, kc_ref, vc_ref, slots, positions, rope, **kwargs)
    ops.rotary_embedding_and_cache(q, k, v, kc, vc, slots, positions, rope, **kwargs)
    tol = rope_tol(dtype)
    torch.testing.assert_close(q, q_ref, **tol)
    torch.testing.assert_close(k, k_ref, **tol)
    torch.testing.assert_close(kc.nan_to_num(7.0), kc_ref.nan_to_num(7.0), **tol)
    assert torch.equal(vc.nan_to_num(7.0), vc_ref.nan_to_num(7.0))
