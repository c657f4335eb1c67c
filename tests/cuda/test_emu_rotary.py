"""Emulated CUDA rotary embedding against lmx.reference: every scaling type, both layouts, every head dim and
dtype, partial rotary, per-sequence dynamic base, positions past 1M, precise angles; under several schedules."""

import math

import pytest
import torch

from lmx import reference

from ..helpers import ROPE_MAX_POS, ROPE_SCALINGS, check_rotary, make_rope, rope_tol
from . import emu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEAD_DIMS = [16, 32, 64, 80, 96, 112, 128, 160, 192, 256]


@pytest.fixture(autouse=True, scope="module")
def _module():
    emu.module()


def _check(rope, q, k, positions, **kwargs):
    check_rotary(emu.rotary_embedding, rope, q, k, positions, **kwargs)


# Covered, not crossed (emu.cover): every dtype x scaling x layout, every dtype x head dim, every head dim x
# scaling, every schedule x scaling and x dtype.
GRID = emu.cover(
    dict(dtype=DTYPES, head_dim=HEAD_DIMS, scaling=list(ROPE_SCALINGS), is_neox=[True, False], sched=emu.SCHEDULES),
    [
        ("dtype", "scaling", "is_neox"),
        ("dtype", "head_dim"),
        ("head_dim", "scaling"),
        ("sched", "scaling"),
        ("sched", "dtype"),
        ("head_dim", "is_neox"),
    ],
)


@pytest.mark.parametrize("dtype,head_dim,scaling,is_neox,sched", GRID, ids=emu.ids(GRID))
def test_matches_reference(dtype, head_dim, scaling, is_neox, sched):
    T, num_kv_heads = 40, 2
    rope = make_rope(head_dim, scaling, is_neox=is_neox)
    q = torch.randn(T, num_kv_heads * 4, head_dim, dtype=dtype)
    k = torch.randn(T, num_kv_heads, head_dim, dtype=dtype)
    positions = torch.randint(0, 4 * ROPE_MAX_POS, (T,))
    with emu.schedule(*sched):
        _check(rope, q, k, positions)


PARTIAL_CASES = emu.cover(
    dict(sched=emu.SCHEDULES, rotary_dim=[16, 32], is_neox=[True, False]), [("sched",), ("rotary_dim", "is_neox")]
)


@pytest.mark.parametrize("sched,rotary_dim,is_neox", PARTIAL_CASES, ids=emu.ids(PARTIAL_CASES))
def test_partial_rotary_leaves_the_rest(sched, rotary_dim, is_neox):
    rope = make_rope(64, "default", rotary_dim=rotary_dim, is_neox=is_neox)
    q = torch.randn(9, 4, 64)
    q0 = q.clone()
    with emu.schedule(*sched):
        _check(rope, q, None, torch.arange(9) * 7)
    assert torch.equal(q[..., rotary_dim:], q0[..., rotary_dim:])


@pytest.mark.parametrize("precise", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_positions_past_one_million(precise, dtype):
    rope = make_rope(128, "default", base=500000.0)
    positions = torch.tensor([0, 1, 2**20, 2**20 + 1, 2**21 - 1, 2**21, 3_000_017, 2**24 + 3])
    q = torch.randn(len(positions), 8, 128, dtype=dtype)
    k = torch.randn(len(positions), 2, 128, dtype=dtype)
    _check(rope, q, k, positions, precise=precise)


def test_precise_mode_is_exact_where_fp32_is_not():
    rope = make_rope(64, "default")
    pos = torch.tensor([2**21 + 1])
    x = torch.zeros(1, 1, 64)
    x[..., :32] = 1.0  # (1, 0) pairs: after rotation they hold (cos, sin) of each angle
    precise, fast = x.clone(), x.clone()
    emu.rotary_embedding(precise, None, pos, rope, precise=True)
    emu.rotary_embedding(fast, None, pos, rope, precise=False)
    exact = torch.cos(pos.double() * reference.inv_freq(rope).double())
    assert (precise[0, 0, :32].double() - exact).abs().max() < 1e-6
    assert (fast[0, 0, :32].double() - exact).abs().max() > 1e-3


DYNAMIC_CASES = emu.cover(dict(sched=emu.SCHEDULES, gqa=[1, 4, 8]), [("sched",), ("gqa",)])


@pytest.mark.parametrize("sched,gqa", DYNAMIC_CASES, ids=emu.ids(DYNAMIC_CASES))
def test_dynamic_base_is_per_sequence(sched, gqa):
    """Three packed sequences, each with its own dynamic-NTK base; without rope_seq_lens the kernel takes each
    sequence's max(position) + 1 (a block reduction over 700 positions)."""
    rope = make_rope(64, "dynamic")
    lens = [5, 700, 300]
    cu = torch.tensor([0, 5, 705, 1005], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lens])
    q = torch.randn(sum(lens), 2 * gqa, 64)
    k = torch.randn(sum(lens), 2, 64)
    with emu.schedule(*sched):
        _check(rope, q.clone(), k.clone(), positions, cu_seqlens=cu, rope_seq_lens=torch.tensor([5, 1024, 300]))
        _check(rope, q.clone(), k.clone(), positions, cu_seqlens=cu)
        shuffled = positions[torch.randperm(len(positions))]  # the max is not the last position
        _check(rope, q.clone(), k.clone(), shuffled, cu_seqlens=cu)


def test_strided_query_and_key():
    """query / key as slices of a fused qkv (token and head strides free)."""
    T, Hq, Hkv, D = 11, 4, 2, 64
    qkv = torch.randn(T, Hq + 2 * Hkv, D)
    q, k = qkv[:, :Hq], qkv[:, Hq : Hq + Hkv]
    v_before = qkv[:, Hq + Hkv :].clone()
    q_ref, k_ref = q.clone(), k.clone()
    rope = make_rope(D, "yarn")
    positions = torch.arange(T) * 13
    reference.rotary_embedding(q_ref, k_ref, positions, rope)
    emu.rotary_embedding(q, k, positions, rope)
    torch.testing.assert_close(q, q_ref, **rope_tol(torch.float32))
    torch.testing.assert_close(k, k_ref, **rope_tol(torch.float32))
    assert torch.equal(qkv[:, Hq + Hkv :], v_before)


def test_bad_arguments_raise_the_ops_errors():
    rope = make_rope(64, "default")
    q = torch.randn(3, 4, 64)
    with pytest.raises(ValueError, match="lmx.rotary_embedding: positions"):
        emu.rotary_embedding(q, None, torch.tensor([0, -1, 2]), rope)
    with pytest.raises(TypeError, match="lmx.rotary_embedding: query"):
        emu.rotary_embedding(q.double(), None, torch.arange(3), rope)


def test_dynamic_base_formula_matches():
    rope = make_rope(64, "dynamic")
    L = 4 * ROPE_MAX_POS
    assert math.isclose(rope.dynamic_base(L), 10000.0 * ((2.0 * L / ROPE_MAX_POS) - 1.0) ** (64 / 62), rel_tol=1e-15)
