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
# quantized KV cache (int8 rows with (scale, zero); float8_e4m3fn with per-head scales)
# ---------------------------------------------------------------------------------------------------------------

FP8_E4M3_MAX = 448.0
QUANTIZED_CACHE_DTYPES = (torch.int8, torch.float8_e4m3fn)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int8 per row (the last dim): ``(q int8 [..., D], scales float32 [..., 2] = (scale, zero))``.

    In fp32: ``lo, hi = min, max``; ``scale = (hi - lo) / 255``; ``q = clamp(round((x - lo) / scale), 0, 255) - 128``
    (round half to even), ``zero = lo + 128 * scale``, so ``x̂ = q * scale + zero``. A constant row gets
    ``scale = 0, zero = lo, q = 0``; a row with a non-finite value (or a non-finite scale) ``scale = zero = NaN,
    q = 0``. ``csrc/kv_quant_math.h`` is the same arithmetic in C++.
    """
    xf = x.float()
    lo = xf.amin(-1, keepdim=True)
    hi = xf.amax(-1, keepdim=True)
    scale = (hi - lo) / 255.0
    valid = torch.isfinite(xf).all(-1, keepdim=True) & torch.isfinite(scale)
    const = valid & (hi == lo)
    quant = valid & ~const
    safe_lo = torch.where(quant, lo, torch.zeros_like(lo))
    safe_scale = torch.where(quant, scale, torch.ones_like(scale))
    levels = torch.round((torch.where(quant, xf, torch.zeros_like(xf)) - safe_lo) / safe_scale).clamp(0, 255)
    q = torch.where(quant, levels - 128, torch.zeros_like(levels)).to(torch.int8)
    nan = torch.full_like(scale, float("nan"))
    zero = torch.where(valid, torch.where(const, lo, lo + 128.0 * scale), nan)
    scale = torch.where(valid, torch.where(const, torch.zeros_like(scale), scale), nan)
    return q, torch.cat((scale, zero), dim=-1)


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x̂ = q * scale + zero`` in fp32; ``scales [..., 2]`` as ``quantize_int8`` returns them."""
    return q.float() * scales[..., 0:1] + scales[..., 1:2]


def quantize_fp8(x: torch.Tensor, head_scales: torch.Tensor) -> torch.Tensor:
    """``x [..., Hkv, D]`` to float8_e4m3fn: ``round_nearest_even(clamp(x / s[h], -448, 448))``, NaN stays NaN."""
    s = head_scales.float()[:, None]
    return (x.float() / s).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def dequantize_fp8(stored: torch.Tensor, head_scales: torch.Tensor) -> torch.Tensor:
    """``x̂ = float(stored) * s[h]`` in fp32 for ``stored [..., Hkv, D]``."""
    return stored.float() * head_scales.float()[:, None]


def dequantize_cache(cache: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """A cache (or any selection of its rows ``[..., Hkv, D]`` with the matching scales) as fp32 values; float
    caches are returned as they are."""
    if cache.dtype == torch.int8:
        return dequantize_int8(cache, scales)
    if cache.dtype == torch.float8_e4m3fn:
        return dequantize_fp8(cache, scales)
    return cache


def fp8_head_scales(k: torch.Tensor, *, margin: float = 1.0) -> torch.Tensor:
    """Per-head fp8 scales ``[Hkv]`` from sample keys or values ``[..., Hkv, D]``: ``amax(|x|) * margin / 448``
    per head (1.0 where a head is all zero), the scale that maps the largest sample to fp8's largest value."""
    amax = k.float().abs().flatten(0, -3).amax(dim=(0, 2)) if k.dim() > 2 else k.float().abs().amax(-1)
    s = amax * margin / FP8_E4M3_MAX
    return torch.where(s > 0, s, torch.ones_like(s))


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A view of an fp8 tensor as uint8 (indexing ops do not all take float8 dtypes)."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


# ---------------------------------------------------------------------------------------------------------------
# paged KV cache
# ---------------------------------------------------------------------------------------------------------------


def reshape_and_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], written in place
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], written in place
    slot_mapping: torch.Tensor,  # [T] int64; slot = block * block_size + offset; negative = skip
    k_scales: torch.Tensor | None = None,  # int8: [num_blocks, block_size, Hkv, 2] written; fp8: [Hkv] read
    v_scales: torch.Tensor | None = None,
) -> None:
    """Scatter each token's key and value into its cache slot; tokens with a negative slot are skipped.

    int8 caches get each (token, head) row quantized by ``quantize_int8`` and its (scale, zero) written to the
    same slot of ``k_scales`` / ``v_scales``; float8_e4m3fn caches get ``quantize_fp8`` with the per-head scales.
    """
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    for x, cache, scales in ((key, k_cache, k_scales), (value, v_cache, v_scales)):
        rows = x[keep]
        if cache.dtype == torch.int8:
            q, sz = quantize_int8(rows)
            cache[blocks, offsets] = q
            scales[blocks, offsets] = sz
        elif cache.dtype == torch.float8_e4m3fn:
            _bytes(cache)[blocks, offsets] = _bytes(quantize_fp8(rows, scales))
        else:
            cache[blocks, offsets] = rows.to(cache.dtype)


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
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
    **rope_kwargs,
) -> None:
    """``rotary_embedding`` on query and key, then ``reshape_and_cache`` of the rotated key (rounded to its dtype
    first, as it is rotated in place) and the value."""
    rotary_embedding(query, key, positions, rope, **rope_kwargs)
    reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, k_scales, v_scales)


# ---------------------------------------------------------------------------------------------------------------
# paged attention
# ---------------------------------------------------------------------------------------------------------------


def _einsum(equation: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """einsum in the operands' dtype; 16-bit operands are multiplied in fp32 and the result rounded once (what
    PyTorch's 16-bit matmuls compute, and much faster than its fp16 einsum on CPUs)."""
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.einsum(equation, a.float(), b.float()).to(a.dtype)
    return torch.einsum(equation, a, b)


def _cached_rows(cache: torch.Tensor, scales: torch.Tensor | None, blocks: torch.Tensor, L: int) -> torch.Tensor:
    """The first ``L`` rows ``[L, Hkv, D]`` of the given blocks, dequantized when the cache is quantized."""
    Hkv, D = cache.shape[2], cache.shape[3]
    rows = _bytes(cache)[blocks].view(cache.dtype).reshape(-1, Hkv, D)[:L]
    if cache.dtype == torch.int8:
        return dequantize_int8(rows, scales[blocks].reshape(-1, Hkv, 2)[:L])
    return dequantize_cache(rows, scales)


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
    k_scales: torch.Tensor | None = None,  # quantized caches (see reshape_and_cache)
    v_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(scale * q kᵀ + bias) v over each sequence's cached keys, causally.

    The ``n`` queries of sequence ``b`` are its last ``n`` tokens: query ``i`` sits at position
    ``p = seq_lens[b] - n + i`` and sees keys ``j <= p`` (and ``p - j < sliding_window`` when a window is set).
    ALiBi adds ``slope[h] * (j - p)``. Computed and returned in ``compute_dtype`` (float64) unless ``out`` is given;
    with a 16-bit ``compute_dtype`` each product accumulates in fp32 and is rounded once, as PyTorch's matmuls do.
    Quantized caches (int8, float8_e4m3fn) are dequantized to fp32 (``dequantize_cache``) and then converted to
    ``compute_dtype``.
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
        k = _cached_rows(k_cache, k_scales, blocks, L).to(compute_dtype)  # [L, Hkv, D]
        v = _cached_rows(v_cache, v_scales, blocks, L).to(compute_dtype)
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


def linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``lmx.ops.linear``: ``input · weightᵀ + bias`` in float64, rounded once to ``input``'s dtype."""
    result = input.double() @ weight.double().T
    if bias is not None:
        result = result + bias.double()
    result = result.to(input.dtype)
    if out is None:
        return result
    out.copy_(result)
    return out
