"""Emulated CUDA reshape_and_cache and fused rotary + cache write against lmx.reference."""

import pytest
import torch

from lmx import reference
from lmx.rope import RopeConfig

from ..helpers import nan_caches, random_slots, rope_tol
from . import emu

BLOCK_SIZES = [1, 16, 256]
HEAD_DIMS = [16, 32, 64, 80, 96, 112, 128, 160, 192, 256]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The (input, cache) dtype pairs the op accepts: equal, or float32 on one side.
PAIRS = [
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
]


@pytest.fixture(autouse=True, scope="module")
def _module():
    emu.module()


def _same(a, b):
    return torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))  # skipped slots stay NaN


# Covered, not crossed (emu.cover): every dtype x head dim, dtype x block size, head dim x block size; every
# schedule with every dtype and block size.
RESHAPE_CASES = emu.cover(
    dict(block_size=BLOCK_SIZES, head_dim=HEAD_DIMS, dtype=DTYPES, sched=emu.SCHEDULES),
    [
        ("dtype", "head_dim"),
        ("dtype", "block_size"),
        ("head_dim", "block_size"),
        ("sched", "dtype"),
        ("sched", "block_size"),
    ],
)


@pytest.mark.parametrize("block_size,head_dim,dtype,sched", RESHAPE_CASES, ids=emu.ids(RESHAPE_CASES))
def test_reshape_and_cache(block_size, head_dim, dtype, sched):
    T, Hkv, num_blocks = 37, 2, max(2, 64 // block_size + 1)
    key = torch.randn(T, Hkv, head_dim, dtype=dtype)
    value = torch.randn(T, Hkv, head_dim, dtype=dtype)
    slots = random_slots(T, num_blocks, block_size)
    k_ref, v_ref = nan_caches(num_blocks, block_size, Hkv, head_dim, dtype)
    k_cache, v_cache = k_ref.clone(), v_ref.clone()
    reference.reshape_and_cache(key, value, k_ref, v_ref, slots)
    with emu.schedule(*sched):
        emu.reshape_and_cache(key, value, k_cache, v_cache, slots)
    assert _same(k_cache, k_ref) and _same(v_cache, v_ref)


@pytest.mark.parametrize("in_dtype,cache_dtype", PAIRS)
def test_reshape_and_cache_converts(in_dtype, cache_dtype):
    key, value = torch.randn(9, 3, 64, dtype=in_dtype), torch.randn(9, 3, 64, dtype=in_dtype)
    k_ref, v_ref = nan_caches(4, 16, 3, 64, cache_dtype)
    k_cache, v_cache = k_ref.clone(), v_ref.clone()
    slots = torch.arange(9) * 3
    reference.reshape_and_cache(key, value, k_ref, v_ref, slots)
    emu.reshape_and_cache(key, value, k_cache, v_cache, slots)
    assert _same(k_cache, k_ref) and _same(v_cache, v_ref)
    assert torch.equal(k_cache.view(-1, 3, 64)[slots], key.to(cache_dtype))


def test_mismatched_dtypes_are_refused():
    key = torch.randn(2, 1, 64, dtype=torch.bfloat16)
    k_cache, v_cache = nan_caches(1, 16, 1, 64, torch.float16)
    with pytest.raises(TypeError, match="lmx.reshape_and_cache: k_cache"):
        emu.reshape_and_cache(key, key, k_cache, v_cache, torch.arange(2))


def test_reshape_and_cache_reads_strided_views():
    T, Hq, Hkv, D = 10, 4, 2, 64
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D)
    key = qkv[:, Hq * D : (Hq + Hkv) * D].view(T, Hkv, D)
    value = qkv[:, (Hq + Hkv) * D :].view(T, Hkv, D)
    k_cache, v_cache = nan_caches(2, 16, Hkv, D, torch.float32)
    emu.reshape_and_cache(key, value, k_cache, v_cache, torch.arange(T))
    assert torch.equal(k_cache.view(-1, Hkv, D)[:T], key)
    assert torch.equal(v_cache.view(-1, Hkv, D)[:T], value)


FUSED_CASES = emu.cover(
    dict(
        block_size=BLOCK_SIZES,
        scaling=["default", "dynamic", "llama3"],
        dtype=DTYPES,
        rotary=["full-neox", "partial-interleaved"],
        sched=emu.SCHEDULES,
    ),
    [
        ("scaling", "dtype", "rotary"),
        ("block_size", "dtype"),
        ("block_size", "scaling"),
        ("block_size", "rotary"),
        ("sched", "dtype"),
        ("sched", "block_size"),
    ],
)


@pytest.mark.parametrize("block_size,scaling,dtype,rotary,sched", FUSED_CASES, ids=emu.ids(FUSED_CASES))
def test_fused_rotary_and_cache(block_size, scaling, dtype, rotary, sched):
    T, Hq, Hkv, D = 29, 8, 2, 128
    kw = dict(factor=2.0) if scaling == "dynamic" else {}
    if scaling == "llama3":
        kw = dict(factor=8.0, original_max_position_embeddings=16)
    rotary_dim, is_neox = (D, True) if rotary == "full-neox" else (64, False)
    rope = RopeConfig(rotary_dim=rotary_dim, scaling_type=scaling, max_position_embeddings=8, is_neox=is_neox, **kw)
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
    with emu.schedule(*sched):
        emu.rotary_embedding_and_cache(q, k, v, kc, vc, slots, positions, rope, **kwargs)
    tol = rope_tol(dtype)
    torch.testing.assert_close(q, q_ref, **tol)
    torch.testing.assert_close(k, k_ref, **tol)
    torch.testing.assert_close(kc.nan_to_num(7.0), kc_ref.nan_to_num(7.0), **tol)
    assert _same(vc, vc_ref)
    # What the cache holds is exactly the rotated key the op left in `key`.
    keep = slots >= 0
    assert torch.equal(kc.view(-1, Hkv, D)[slots[keep]], k[keep])
