"""The emulated CUDA kernels (test-only module ``lmx_cuda_emu``, built by ``make cuda-emu`` into build/cuda-emu).

Wrappers with the signatures of ``lmx.ops`` run torch.ops.lmx_emu.* on CPU tensors: the kernels of csrc/cuda run
under the host emulator, behind the same checks and torch-side code as the real CUDA ops.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("LMX_CUDA_EMU_DIR", ROOT / "build" / "cuda-emu"))

# Thread schedules (name, seed): lanes near lockstep, warps one after the other (both orders), and shuffled.
SCHEDULES = [("rr", 0), ("warp", 0), ("warp-rev", 0), ("rr", 1234), ("warp", 77)]
SCHEDULE_IDS = [f"{s}-{seed}" if seed else s for s, seed in SCHEDULES]


def load():
    """The module, or a skip (a failure when LMX_REQUIRE_CUDA_EMU=1, as `make cuda-emu` sets)."""
    if str(BUILD_DIR) not in sys.path:
        sys.path.insert(0, str(BUILD_DIR))
    try:
        return importlib.import_module("lmx_cuda_emu")
    except ImportError as e:
        if os.environ.get("LMX_REQUIRE_CUDA_EMU") == "1":
            raise
        pytest.skip(f"emulated CUDA kernels not built ({e}); run `make cuda-emu`")


_mod = None


def module():
    global _mod
    if _mod is None:
        _mod = load()
    return _mod


def configure(schedule: str, seed: int = 0) -> None:
    module().configure(schedule, seed, 2)


@contextlib.contextmanager
def schedule(name: str, seed: int = 0):
    configure(name, seed)
    try:
        yield
    finally:
        configure("rr", 0)


def rotary_embedding(query, key, positions, rope, *, cu_seqlens=None, rope_seq_lens=None, precise=False):
    module()
    torch.ops.lmx_emu.rotary_embedding(
        query, key, positions, rope.rotary_dim, rope.is_neox, rope.packed, cu_seqlens, rope_seq_lens, precise
    )


def rotary_embedding_and_cache(
    query,
    key,
    value,
    k_cache,
    v_cache,
    slot_mapping,
    positions,
    rope,
    *,
    cu_seqlens=None,
    rope_seq_lens=None,
    precise=False,
    k_scales=None,
    v_scales=None,
):
    module()
    torch.ops.lmx_emu.rotary_embedding_and_cache(
        query,
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        positions,
        rope.rotary_dim,
        rope.is_neox,
        rope.packed,
        cu_seqlens,
        rope_seq_lens,
        precise,
        k_scales,
        v_scales,
    )


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, k_scales=None, v_scales=None):
    module()
    torch.ops.lmx_emu.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, k_scales, v_scales)


def paged_attention(
    query,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    cu_seqlens_q,
    scale,
    *,
    alibi_slopes=None,
    sliding_window=-1,
    out=None,
    k_scales=None,
    v_scales=None,
    kernel="auto",
    partition_size=0,
):
    module()
    if out is None:
        out = query.new_empty(query.shape)
    torch.ops.lmx_emu.paged_attention(
        out,
        query,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        cu_seqlens_q,
        float(scale),
        alibi_slopes,
        int(sliding_window),
        k_scales,
        v_scales,
        kernel,
        int(partition_size),
    )
    return out


def cover(axes: dict, groups=None) -> list[tuple]:
    """Few cases that still hold every combination that matters: each tuple of axis names in ``groups`` (default:
    every pair of axes) has all its value combinations in some case. Greedy and deterministic (the first candidate
    covering the most new combinations wins), so a grid keeps its ids from run to run.

    The emulated kernels cost CPU time per case, so grids are covered (every dtype x head dim, every dtype x GQA x
    block size, every schedule x kernel, ...) instead of crossed in full.
    """
    import itertools

    names = list(axes)
    if groups is None:
        groups = list(itertools.combinations(names, 2))
    idx = [[names.index(n) for n in g] for g in groups]
    todo = set()
    for gi, g in enumerate(idx):
        for combo in itertools.product(*(range(len(axes[names[i]])) for i in g)):
            todo.add((gi, combo))
    candidates = list(itertools.product(*(range(len(axes[n])) for n in names)))
    cases = []
    while todo:
        best, gain = None, 0
        for c in candidates:
            n = sum((gi, tuple(c[i] for i in g)) in todo for gi, g in enumerate(idx))
            if n > gain:
                best, gain = c, n
        cases.append(best)
        for gi, g in enumerate(idx):
            todo.discard((gi, tuple(best[i] for i in g)))
    return [tuple(axes[n][i] for n, i in zip(names, c)) for c in cases]


def case_id(*values) -> str:
    def one(v):
        if isinstance(v, torch.dtype):
            return str(v).removeprefix("torch.")
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):  # a schedule
            return f"{v[0]}-{v[1]}" if v[1] else v[0]
        return str(v)

    return "-".join(one(v) for v in values)


def ids(cases) -> list[str]:
    return [case_id(*c) for c in cases]
