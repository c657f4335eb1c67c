"""torch.library.opcheck on every op (CPU): schema (declared mutations and aliasing match what the kernel does),
fake-tensor implementation, AOT dispatch with dynamic shapes, autograd registration."""

import pytest
import torch

from lmx import ops  # noqa: F401  (registers torch.ops.lmx.*)
from lmx.rope import RopeConfig

from .helpers import make_paged_batch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ROPES = {
    "default": RopeConfig(rotary_dim=64),
    "dynamic": RopeConfig(rotary_dim=32, scaling_type="dynamic", factor=2.0, max_position_embeddings=16, is_neox=False),
}


def _rotary_args(dtype, rope, with_key, packed_seqs):
    T = 12
    q, k = torch.randn(T, 4, 64, dtype=dtype), torch.randn(T, 2, 64, dtype=dtype)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32) if packed_seqs else None
    lens = torch.tensor([5, 40]) if packed_seqs else None
    return (
        q,
        k if with_key else None,
        torch.arange(T) * 3,
        rope.rotary_dim,
        rope.is_neox,
        rope.packed,
        cu,
        lens,
        False,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("with_key,packed_seqs", [(True, True), (False, False)])
def test_rotary_embedding(dtype, rope, with_key, packed_seqs):
    torch.library.opcheck(
        torch.ops.lmx.rotary_embedding.default, _rotary_args(dtype, ROPES[rope], with_key, packed_seqs)
    )


def _caches(dtype, block_size=16):
    k = torch.zeros(3, block_size, 2, 64, dtype=dtype)
    return k, k.clone()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope", list(ROPES))
def test_rotary_embedding_and_cache(dtype, rope):
    q, k, positions, rotary_dim, is_neox, packed, cu, lens, precise = _rotary_args(dtype, ROPES[rope], True, True)
    kc, vc = _caches(dtype)
    slots = torch.tensor([0, 1, 2, -1, 17, 18, 19, 33, 34, 35, 36, -1])
    torch.library.opcheck(
        torch.ops.lmx.rotary_embedding_and_cache.default,
        (q, k, torch.randn_like(k), kc, vc, slots, positions, rotary_dim, is_neox, packed, cu, lens, precise),
    )


@pytest.mark.parametrize(
    "dtype,cache_dtype", [(d, d) for d in DTYPES] + [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)]
)
def test_reshape_and_cache(dtype, cache_dtype):
    key, value = torch.randn(7, 2, 64, dtype=dtype), torch.randn(7, 2, 64, dtype=dtype)
    kc, vc = _caches(cache_dtype, block_size=4)
    torch.library.opcheck(
        torch.ops.lmx.reshape_and_cache.default, (key, value, kc, vc, torch.tensor([3, -1, 0, 11, 4, 5, -1]))
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alibi,window", [(False, -1), (True, 8)])
def test_paged_attention(dtype, alibi, window):
    q, kc, vc, bt, sl, cu = make_paged_batch([30, 9, 17], [30, 1, 4], 4, 2, 64, 16, dtype)
    out = torch.empty_like(q)
    slopes = torch.rand(4) if alibi else None
    torch.library.opcheck(torch.ops.lmx.paged_attention.default, (out, q, kc, vc, bt, sl, cu, 0.125, slopes, window))
