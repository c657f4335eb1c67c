"""Pure-PyTorch reference of every lmx op: readable, slow, and what the tests compare the kernels to.

Each function has the signature and the semantics of its counterpart in ``lmx.ops`` (in-place ops work in place
here too). Nothing here is tuned; clarity wins every time.
"""

from __future__ import annotations

import math

import torch

from .rope import RopeConfig

# ---------------------------------------------------------------------------------------------------------------
# rotary embedding
# ---------------------------------------------------------------------------------------------------------------


def inv_freq(rope: RopeConfig, seq_len: int | None = None) -> torch.Tensor:
    """Inverse frequencies ``[rotary_dim / 2]`` (fp32) for a sequence of ``seq_len`` tokens.

    Mirrors ``csrc/rope_math.h``: every pow is taken in float64 and rounded once to fp32 (transformers'
    vectorised fp32 pow agrees to within 1 ulp); the remaining arithmetic follows ``modeling_rope_utils.py``.
    """
    d = rope.rotary_dim
    exponent = torch.arange(0, d, 2, dtype=torch.float32) / d  # fp32, as transformers
    base = rope.dynamic_base(seq_len) if (rope.scaling_type == "dynamic" and seq_len is not None) else rope.base
    pos_freqs = (torch.tensor(base, dtype=torch.float64) ** exponent.double()).float()
    inv = 1.0 / pos_freqs
    if rope.scaling_type == "linear":
        inv = inv / torch.tensor(rope.factor, dtype=torch.float32)
    elif rope.scaling_type == "yarn":
        inv = _yarn_inv_freq(rope, pos_freqs)
    elif rope.scaling_type == "llama3":
        inv = _llama3_inv_freq(rope, inv)
    return inv


def _yarn_inv_freq(rope: RopeConfig, pos_freqs: torch.Tensor) -> torch.Tensor:
    d, base = rope.rotary_dim, rope.base
    orig = rope.original_max_position_embeddings

    def correction_dim(num_rotations: float) -> float:
        return (d * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    inv_extrapolation = 1.0 / pos_freqs
    inv_interpolation = 1.0 / (rope.factor * pos_freqs)
    return inv_interpolation * (1 - extrapolation_factor) + inv_extrapolation * extrapolation_factor


def _llama3_inv_freq(rope: RopeConfig, inv: torch.Tensor) -> torch.Tensor:
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _token_seq_ids(num_tokens: int, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    if cu_seqlens is None:
        return torch.zeros(num_tokens, dtype=torch.long)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long().cpu()
    return torch.repeat_interleave(torch.arange(len(lengths)), lengths)


def rotary_embedding(
    query: torch.Tensor,  # [T, Hq, D], rotated in place
    key: torch.Tensor | None,  # [T, Hkv, D], rotated in place
    positions: torch.Tensor,  # [T] int64
    rope: RopeConfig,
    *,
    cu_seqlens: torch.Tensor | None = None,  # [B + 1] int32: tokens of sequence b are cu[b]:cu[b+1]
    rope_seq_lens: torch.Tensor | None = None,  # [B] int64: length that sets each sequence's dynamic base
    precise: bool = False,
) -> None:
    """Rotate the first ``rope.rotary_dim`` channels of every head of ``query`` and ``key`` in place.

    The angle of frequency ``i`` at position ``p`` is ``fp32(p) * inv_freq[i]`` in fp32, as transformers computes
    it (``precise=True`` takes the product in float64 instead); cos and sin are computed in fp32 and multiplied
    by yarn's attention factor; the rotation itself runs in fp32 and is rounded once to the tensor's dtype.
    For ``dynamic``, sequence ``b`` uses ``rope.dynamic_base(rope_seq_lens[b])``; without ``rope_seq_lens`` each
    sequence uses ``max(positions of that sequence) + 1``, which is what transformers does for one sequence.
    """
    T = query.shape[0]
    seq_of_token = _token_seq_ids(T, cu_seqlens)
    num_seqs = 1 if cu_seqlens is None else cu_seqlens.numel() - 1
    pos = positions.cpu().long()
    cos = torch.empty(T, rope.rotary_dim // 2, dtype=torch.float32)
    sin = torch.empty_like(cos)
    for b in range(num_seqs):
        sel = seq_of_token == b
        if not sel.any():
            continue
        if rope_seq_lens is not None:
            seq_len = int(rope_seq_lens[b])
        else:
            seq_len = int(pos[sel].max()) + 1
        freqs = inv_freq(rope, seq_len)
        if precise:  # product and reduction in float64, cos / sin rounded once
            angle = torch.fmod(pos[sel].double()[:, None] * freqs.double()[None, :], 2 * math.pi)
            c, s = torch.cos(angle).float(), torch.sin(angle).float()
        else:  # fp32 product, as transformers
            angle = pos[sel].float()[:, None] * freqs[None, :]
            c, s = torch.cos(angle), torch.sin(angle)
        attention_factor = torch.tensor(rope.yarn_attention_factor, dtype=torch.float32)
        cos[sel] = c * attention_factor
        sin[sel] = s * attention_factor
    cos, sin = cos.to(query.device), sin.to(query.device)
    for x in (query, key):
        if x is not None:
            x.copy_(_rotate(x, cos, sin, rope.rotary_dim, rope.is_neox))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, is_neox: bool) -> torch.Tensor:
    xf = x.float()
    rot, rest = xf[..., :rotary_dim], xf[..., rotary_dim:]
    c, s = cos[:, None, :], sin[:, None, :]
    if is_neox:
        x1, x2 = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2 :]
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    return torch.cat((out, rest), dim=-1).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# paged KV cache
# ---------------------------------------------------------------------------------------------------------------


def reshape_and_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], written in place
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], written in place
    slot_mapping: torch.Tensor,  # [T] int64; slot = block * block_size + offset; negative = skip
) -> None:
    """Scatter each token's key and value into its cache slot; tokens with a negative slot are skipped."""
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = key[keep].to(k_cache.dtype)
    v_cache[blocks, offsets] = value[keep].to(v_cache.dtype)


def rotary_embedding_and_cache(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    positions: torch.Tensor,
    rope: RopeConfig,
    **rope_kwargs,
) -> None:
    """``rotary_embedding`` on query and key, then ``reshape_and_cache`` of the rotated key and the value."""
    rotary_embedding(query, key, positions, rope, **rope_kwargs)
    reshape_and_cache(key, value, k_cache, v_cache, slot_mapping)


# ---------------------------------------------------------------------------------------------------------------
# paged attention
# ---------------------------------------------------------------------------------------------------------------


def _einsum(equation: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """einsum in the operands' dtype; 16-bit operands are multiplied in fp32 and the result rounded once (what
    PyTorch's 16-bit matmuls compute, and much faster than its fp16 einsum on CPUs)."""
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.einsum(equation, a.float(), b.float()).to(a.dtype)
    return torch.einsum(equation, a, b)


def paged_attention(
    query: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32: tokens in the cache for each sequence, this step's included
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32: queries of sequence b are cu[b]:cu[b+1]
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,  # [Hq] fp32
    sliding_window: int = -1,
    out: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """softmax(scale * q kᵀ + bias) v over each sequence's cached keys, causally.

    The ``n`` queries of sequence ``b`` are its last ``n`` tokens: query ``i`` sits at position
    ``p = seq_lens[b] - n + i`` and sees keys ``j <= p`` (and ``p - j < sliding_window`` when a window is set).
    ALiBi adds ``slope[h] * (j - p)``. Computed and returned in ``compute_dtype`` (float64) unless ``out`` is given;
    with a 16-bit ``compute_dtype`` each product accumulates in fp32 and is rounded once, as PyTorch's matmuls do.
    """
    T, Hq, D = query.shape
    block_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    result = torch.empty(T, Hq, D, dtype=compute_dtype, device=query.device)
    for b in range(block_tables.shape[0]):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        n, L = q1 - q0, int(seq_lens[b])
        if n == 0:
            continue
        nblocks = (L + block_size - 1) // block_size
        blocks = block_tables[b, :nblocks].long()
        k = k_cache[blocks].reshape(-1, Hkv, D)[:L].to(compute_dtype)  # [L, Hkv, D]
        v = v_cache[blocks].reshape(-1, Hkv, D)[:L].to(compute_dtype)
        k = k.repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v.repeat_interleave(group, dim=1)
        q = query[q0:q1].to(compute_dtype)  # [n, Hq, D]
        scores = _einsum("nhd,lhd->hnl", q, k) * scale
        qpos = torch.arange(L - n, L, device=query.device)[:, None]
        kpos = torch.arange(L, device=query.device)[None, :]
        if alibi_slopes is not None:
            scores = scores + alibi_slopes.to(compute_dtype)[:, None, None] * (kpos - qpos)[None]
        visible = kpos <= qpos
        if sliding_window > 0:
            visible = visible & (qpos - kpos < sliding_window)
        scores = scores.masked_fill(~visible[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        result[q0:q1] = _einsum("hnl,lhd->nhd", probs, v)
    if out is None:
        return result
    out.copy_(result)
    return out
