"""lmx's kernels: fused rotary embedding with dynamic NTK, paged KV-cache writes, paged attention, and the CPU
GEMV of decode steps (``linear``).

This module is the only importer of ``lmx._C``. The C++ extension registers each op with the PyTorch dispatcher
as ``torch.ops.lmx.<name>``, one implementation per dispatch key (CPU; CUDA when built with it, else one that
raises a clear error), each validating every input with the same checks (``csrc/checks.h``). This module adds the
fake (meta) implementations ``torch.compile`` needs, plus a documented wrapper per op. Shapes use the packed "varlen" convention of DESIGN.md §2:

    T tokens in all, B sequences, query [T, Hq, D], key / value [T, Hkv, D], Hq % Hkv == 0,
    caches [num_blocks, block_size, Hkv, D] (NHD), block_tables [B, max_blocks] int32, seq_lens [B] int32,
    cu_seqlens [B + 1] int32, positions [T] int64, slot_mapping [T] int64 (negative = skip).

Quantized KV caches: a cache of dtype ``torch.int8`` or ``torch.float8_e4m3fn`` (same shape) comes with two
float32 side tensors ``k_scales`` / ``v_scales``: int8 ``[num_blocks, block_size, Hkv, 2]`` (scale, zero) per slot
and kv head, written by the cache-write ops; fp8 ``[Hkv]`` per-head scales, positive and finite, only read.
``lmx.reference.quantize_int8`` / ``quantize_fp8`` define the arithmetic; ``new_kv_scales`` allocates them.

The pure-PyTorch reference of each op, with the same signature, is ``lmx.reference``.
"""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the library that registers torch.ops.lmx.*)
from .rope import RopeConfig

__all__ = [
    "RopeConfig",
    "rotary_embedding",
    "reshape_and_cache",
    "rotary_embedding_and_cache",
    "paged_attention",
    "linear",
    "new_kv_scales",
    "build_info",
    "rope_param_fields",
]

_ops = torch.ops.lmx
_ROPE_PARAM_FIELDS = tuple(_C.rope_param_fields())


def rope_param_fields() -> tuple[str, ...]:
    """Names of the values of the ops' ``rope_params`` list, in the order the C++ reads them (one table in
    ``csrc/checks.cpp`` drives both); ``RopeConfig.packed`` is built by name from it."""
    return _ROPE_PARAM_FIELDS


def build_info() -> dict:
    """What the extension was built with and chose on this CPU: ``{"cuda": bool, "torch": str,
    "cpu_attention_isa": "avx512_bf16" | "avx512" | "avx2" | "baseline", "cpu_blas": bool}``."""
    return dict(_C.build_info())


def _fake_in_place(name: str):
    """Every lmx op writes into tensors it is given and returns nothing, so its fake implementation only checks
    that the tensors share a device: the dispatcher also routes here a call that mixes ``meta`` tensors with real
    ones, which must fail as the kernels' own device check does rather than do nothing."""
    arg_names = [a.name for a in getattr(_ops, name).default._schema.arguments]

    def fake(*args, **kwargs) -> None:
        device = None
        for arg, value in [*zip(arg_names, args), *kwargs.items()]:
            if not isinstance(value, torch.Tensor):
                continue
            if device is None:
                device = value.device
            elif value.device != device:
                raise ValueError(
                    f"lmx.{name}: {arg}: expected a tensor on {device} (the device of the first tensor), "
                    f"got {value.device}"
                )
        return None

    return fake


OP_NAMES = ("rotary_embedding", "reshape_and_cache", "rotary_embedding_and_cache", "paged_attention", "linear")
for _name in OP_NAMES:
    torch.library.register_fake(f"lmx::{_name}")(_fake_in_place(_name))


def rotary_embedding(
    query: torch.Tensor,
    key: torch.Tensor | None,
    positions: torch.Tensor,
    rope: RopeConfig,
    *,
    cu_seqlens: torch.Tensor | None = None,
    rope_seq_lens: torch.Tensor | None = None,
    precise: bool = False,
) -> None:
    """Rotate the first ``rope.rotary_dim`` channels of every head of ``query`` (and ``key``) in place.

    Args:
        query: ``[T, Hq, D]``, fp32 / bf16 / fp16; last dim contiguous.
        key: ``[T, Hkv, D]`` of the same dtype, or ``None``.
        positions: ``[T]`` int64, each ``>= 0``.
        rope: the model's ``RopeConfig`` (scaling type, layout, partial rotary).
        cu_seqlens: ``[B + 1]`` int32 sequence boundaries of the packed tokens; ``None`` means one sequence.
        rope_seq_lens: ``[B]`` int64: the length that sets each sequence's dynamic-NTK base (``hf`` mode: the
            prompt length while prefilling, even in chunks; ``p + 1`` when decoding position ``p``). ``None``
            takes ``max(position) + 1`` of each sequence, transformers' rule.
        precise: take ``position * inv_freq`` in float64 (exact past 2^24) instead of fp32 (transformers).

    cos / sin are computed in the kernel from the per-sequence base, never read from a table.
    """
    _ops.rotary_embedding(
        query, key, positions, rope.rotary_dim, rope.is_neox, rope.packed, cu_seqlens, rope_seq_lens, precise
    )


def new_kv_scales(k_cache: torch.Tensor, fp8_scale: float | torch.Tensor = 1.0):
    """The ``(k_scales, v_scales)`` a cache of ``k_cache``'s dtype needs: ``(None, None)`` for float caches; int8:
    two NaN-filled float32 ``[num_blocks, block_size, Hkv, 2]`` tensors (the cache writes fill the slots they
    write); float8_e4m3fn: two float32 ``[Hkv]`` tensors of ``fp8_scale`` (a number or a ``[Hkv]`` tensor)."""
    nb, bs, hkv = k_cache.shape[:3]
    if k_cache.dtype == torch.int8:
        k = torch.full((nb, bs, hkv, 2), float("nan"), dtype=torch.float32, device=k_cache.device)
        return k, k.clone()
    if k_cache.dtype == torch.float8_e4m3fn:
        k = torch.empty(hkv, dtype=torch.float32, device=k_cache.device)
        k.copy_(torch.as_tensor(fp8_scale, dtype=torch.float32).expand(hkv))
        return k, k.clone()
    return None, None


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> None:
    """Write ``key`` / ``value`` ``[T, Hkv, D]`` into the paged caches at ``slot_mapping[t]``.

    ``slot = block * block_size + offset``; a negative slot skips the token (padding). Caches are
    ``[num_blocks, block_size, Hkv, D]`` and may have a different dtype than key/value (converted on write).
    int8 / float8_e4m3fn caches quantize on write and need ``k_scales`` / ``v_scales`` (module docstring).
    """
    _ops.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, k_scales, v_scales)


def rotary_embedding_and_cache(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    positions: torch.Tensor,
    rope: RopeConfig,
    *,
    cu_seqlens: torch.Tensor | None = None,
    rope_seq_lens: torch.Tensor | None = None,
    precise: bool = False,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> None:
    """Fused ``rotary_embedding`` (query and key, in place) and ``reshape_and_cache`` of the rotated key and value.

    One pass over the tokens: each key is rotated on its way into the cache (quantized there for int8 / fp8
    caches, which need ``k_scales`` / ``v_scales``).
    """
    _ops.rotary_embedding_and_cache(
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


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int = -1,
    out: torch.Tensor | None = None,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of packed queries over paged caches: decode, prefill and chunked prefill in one op.

    Args:
        query: ``[T, Hq, D]``; the ``n_b = cu_seqlens_q[b+1] - cu_seqlens_q[b]`` queries of sequence ``b`` are its
            last ``n_b`` tokens (already written to the cache), so query ``i`` is at position
            ``seq_lens[b] - n_b + i`` and attends causally to keys ``0..that position``.
        k_cache, v_cache: ``[num_blocks, block_size, Hkv, D]``, the dtype of ``query``, or both int8 or both
            float8_e4m3fn (read and dequantized in registers; ``k_scales`` / ``v_scales`` as written by the cache
            writes).
        block_tables: ``[B, max_blocks]`` int32, cache block of each ``block_size`` tokens of a sequence.
        seq_lens: ``[B]`` int32, tokens in the cache per sequence (this step's included).
        cu_seqlens_q: ``[B + 1]`` int32.
        scale: softmax scale, usually ``D ** -0.5``.
        alibi_slopes: optional ``[Hq]`` fp32; adds ``slope[h] * (key_pos - query_pos)``.
        sliding_window: ``> 0`` limits each query to the last ``sliding_window`` keys (itself included).
        out: optional ``[T, Hq, D]`` output buffer.

    Returns ``out`` ``[T, Hq, D]``. Accumulation is fp32 with an online softmax; memory is O(tile), never O(T²).
    """
    if out is None:
        out = query.new_empty(query.shape)  # contiguous, whatever the strides of query
    _ops.paged_attention(
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
    )
    return out


def linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``input · weightᵀ (+ bias)``, as ``torch.nn.functional.linear``, for the few rows of a decode step.

    Args:
        input: ``[M, K]``, fp32 / bf16 / fp16; last dim contiguous.
        weight: ``[N, K]`` of the same dtype, contiguous.
        bias: optional ``[N]`` of the same dtype.
        out: optional ``[M, N]`` output buffer (last dim contiguous, not overlapping the inputs).

    On CPU, lmx's kernel (``csrc/cpu/linear.cpp``): each output is one fp32 sum whose order depends only on ``K``,
    not on the thread count or on ``M`` (a row's result does not depend on the other rows of the batch), rounded
    once to the dtype. It reads the weights once per two rows of ``input``: use it for small ``M`` (decode), a GEMM
    library for prefill. On other devices: ``torch``'s own GEMM after the same argument checks.
    """
    if out is None:
        out = input.new_empty((input.shape[0], weight.shape[0]) if input.dim() == 2 and weight.dim() == 2 else (0,))
    _ops.linear(out, input, weight, bias)
    return out
