"""Builders shared by the kernel tests: paged caches with NaN in every unused slot, packed batches."""

from __future__ import annotations

import torch


def make_paged_batch(
    seq_lens, query_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype, extra_blocks=3, max_blocks=None
):
    """Random K/V for each sequence scattered into shuffled cache blocks; every other slot holds NaN.

    Returns (query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q).
    """
    blocks_per_seq = [(n + block_size - 1) // block_size for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + extra_blocks
    max_blocks = max_blocks or max(max(blocks_per_seq), 1)
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    perm = torch.randperm(num_blocks)
    block_tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32)  # unused entries: invalid
    used = 0
    for b, n in enumerate(seq_lens):
        nb = blocks_per_seq[b]
        block_tables[b, :nb] = perm[used : used + nb].int()
        used += nb
        for j in range(n):
            blk = block_tables[b, j // block_size]
            k_cache[blk, j % block_size] = torch.randn(num_kv_heads, head_dim).to(dtype)
            v_cache[blk, j % block_size] = torch.randn(num_kv_heads, head_dim).to(dtype)
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(query_lens), 0)
    query = torch.randn(int(cu[-1]), num_q_heads, head_dim).to(dtype)
    return query, k_cache, v_cache, block_tables, torch.tensor(seq_lens, dtype=torch.int32), cu


# ---- rotary embedding ------------------------------------------------------------------------------------------

ROPE_SCALINGS = {
    "default": dict(),
    "linear": dict(factor=4.0),
    "dynamic": dict(factor=2.0),
    "yarn": dict(factor=4.0, original_max_position_embeddings=256),
    "llama3": dict(factor=8.0, original_max_position_embeddings=256, low_freq_factor=1.0, high_freq_factor=4.0),
}
ROPE_MAX_POS = 256


def make_rope(head_dim, scaling, **kw):
    """A RopeConfig of ``scaling`` with the test grid's parameters (trained context ``ROPE_MAX_POS``)."""
    from lmx.rope import RopeConfig

    return RopeConfig(
        rotary_dim=kw.pop("rotary_dim", head_dim),
        base=kw.pop("base", 10000.0),
        scaling_type=scaling,
        max_position_embeddings=ROPE_MAX_POS,
        **ROPE_SCALINGS[scaling],
        **kw,
    )


def rope_tol(dtype):
    """One ulp of the dtype (both sides round the fp32 rotation once; they may land on adjacent values)."""
    return {
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
        torch.float16: dict(atol=2e-3, rtol=2e-3),
    }[dtype]


def check_rotary(rotate, rope, q, k, positions, **kwargs):
    """``rotate`` (an implementation of lmx.ops.rotary_embedding) on q / k in place, against lmx.reference."""
    from lmx import reference

    q_ref, k_ref = q.clone(), None if k is None else k.clone()
    reference.rotary_embedding(q_ref, k_ref, positions, rope, **kwargs)
    rotate(q, k, positions, rope, **kwargs)
    torch.testing.assert_close(q, q_ref, **rope_tol(q.dtype))
    if k is not None:
        torch.testing.assert_close(k, k_ref, **rope_tol(k.dtype))


# ---- KV-cache writes -------------------------------------------------------------------------------------------


def nan_caches(num_blocks, block_size, num_kv_heads, head_dim, dtype):
    """K and V caches with NaN in every slot (a kernel that reads a slot it did not write fails)."""
    k = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    return k, k.clone()


def random_slots(T, num_blocks, block_size, skip_every=5):
    """``T`` distinct random slots, every ``skip_every``-th one -1 (a padding token)."""
    slots = torch.randperm(num_blocks * block_size)[:T]
    slots[::skip_every] = -1
    return slots


# ---- paged attention -------------------------------------------------------------------------------------------


def check_attention(out, query, k_cache, v_cache, block_tables, seq_lens, cu, scale, label="", **kwargs):
    """FlashAttention's tolerance rule: ``out``'s error against a float64 reference is at most twice that of PyTorch
    computing in the same dtype, plus a floor (a 16-bit output is rounded at least once: its half-ulp at |out| <= 4).
    """
    from lmx import reference

    assert out.dtype == query.dtype and out.shape == query.shape
    exact = reference.paged_attention(query, k_cache, v_cache, block_tables, seq_lens, cu, scale, **kwargs)
    compute = torch.float32 if query.dtype == torch.float32 else query.dtype
    same_dtype = reference.paged_attention(
        query, k_cache, v_cache, block_tables, seq_lens, cu, scale, compute_dtype=compute, **kwargs
    )
    err = (out.double() - exact).abs().max().item()
    pt_err = (same_dtype.double() - exact).abs().max().item()
    floor = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[query.dtype]
    assert torch.isfinite(out).all()
    assert err <= 2 * pt_err + floor, f"{label}error {err:.3g} vs PyTorch same-dtype error {pt_err:.3g}"
