"""Quantized KV caches for the CUDA tests (emulated and GPU): empty caches with poisoned unused slots, paged batches
quantized by lmx.reference, bitwise comparison."""

import torch

from lmx import reference

QDTYPES = [torch.int8, torch.float8_e4m3fn]


def qname(qdtype):
    return "int8" if qdtype == torch.int8 else "fp8"


def as_bytes(t):
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def same(a, b):
    """Bit for bit for int8 / fp8 tensors; for float scales equal values and NaN at the same places."""
    if a.dtype in (torch.int8, torch.float8_e4m3fn):
        return torch.equal(as_bytes(a), as_bytes(b))
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


def quant_caches(num_blocks, block_size, num_kv_heads, head_dim, qdtype, fp8_scales=None):
    """Empty quantized caches (k, v, k_scales, v_scales): int8 slots hold random values with NaN scales, fp8 slots
    NaN; fp8 per-head scales as given (default: 0.01 + 0.005 h)."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    if qdtype == torch.int8:
        k = torch.randint(-128, 128, shape, dtype=torch.int8)
        ks = torch.full((*shape[:3], 2), float("nan"))
        return k, k.clone(), ks, ks.clone()
    k = torch.full(shape, float("nan")).to(torch.float8_e4m3fn)
    if fp8_scales is None:
        fp8_scales = 0.01 + 0.005 * torch.arange(num_kv_heads, dtype=torch.float32)
    return k, k.clone(), fp8_scales.clone(), (fp8_scales * 1.5).clone()


def quantize_batch(batch, qdtype):
    """A paged batch (make_paged_batch: NaN in unused slots) with its caches quantized by lmx.reference: every slot
    is written, so unused int8 slots get NaN scales (then random values) and unused fp8 slots NaN. fp8 scales from
    the keys' / values' absolute maxima."""
    q, kc, vc, bt, sl, cu = batch
    nb, bs, Hkv, D = kc.shape
    rows_k, rows_v = kc.reshape(-1, Hkv, D), vc.reshape(-1, Hkv, D)
    if qdtype == torch.int8:
        kq, vq, ks, vs = quant_caches(nb, bs, Hkv, D, qdtype)
    else:
        ks = reference.fp8_head_scales(rows_k.nan_to_num(0.0))
        vs = reference.fp8_head_scales(rows_v.nan_to_num(0.0))
        kq, vq, _, _ = quant_caches(nb, bs, Hkv, D, qdtype)
    reference.reshape_and_cache(rows_k, rows_v, kq, vq, torch.arange(nb * bs), ks, vs)
    if qdtype == torch.int8:  # garbage values in the unused rows (their scales are NaN)
        unused = ks[..., 0].isnan()
        kq[unused] = torch.randint(-128, 128, (int(unused.sum()), D), dtype=torch.int8)
        vq[unused] = torch.randint(-128, 128, (int(unused.sum()), D), dtype=torch.int8)
    return (q, kq, vq, bt, sl, cu), dict(k_scales=ks, v_scales=vs)
