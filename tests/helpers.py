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
