"""lmx.ops on CUDA tensors against lmx.reference (marker `cuda`: skipped without a GPU, as there is none in CI).

The grids of tests/test_rotary.py, test_cache.py and test_attention.py, with the dtypes, head dims and block sizes
the CUDA kernels are built for. Written for the day a GPU exists; never run so far.
"""

import pytest
import torch

from lmx import ops, reference
from lmx.rope import RopeConfig

from ..helpers import make_paged_batch
from .quant import quant_caches, quantize_batch, same

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEAD_DIMS = [16, 32, 64, 80, 96, 112, 128, 160, 192, 256]
BLOCK_SIZES = [1, 16, 256]
SCALINGS = {
    "default": dict(),
    "linear": dict(factor=4.0),
    "dynamic": dict(factor=2.0),
    "yarn": dict(factor=4.0, original_max_position_embeddings=256),
    "llama3": dict(factor=8.0, original_max_position_embeddings=256, low_freq_factor=1.0, high_freq_factor=4.0),
}
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def _cuda(*tensors):
    return [t.cuda() if isinstance(t, torch.Tensor) else t for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_matches_reference(dtype, head_dim, scaling, is_neox):
    rope = RopeConfig(
        rotary_dim=head_dim, scaling_type=scaling, max_position_embeddings=256, is_neox=is_neox, **SCALINGS[scaling]
    )
    q, k = torch.randn(40, 8, head_dim, dtype=dtype), torch.randn(40, 2, head_dim, dtype=dtype)
    positions = torch.randint(0, 1024, (40,))
    q_ref, k_ref = q.clone(), k.clone()
    reference.rotary_embedding(q_ref, k_ref, positions, rope)
    qc, kc, pc = _cuda(q, k, positions)
    ops.rotary_embedding(qc, kc, pc, rope)
    torch.testing.assert_close(qc.cpu(), q_ref, **TOL[dtype])
    torch.testing.assert_close(kc.cpu(), k_ref, **TOL[dtype])


@pytest.mark.parametrize("precise", [False, True])
def test_rotary_positions_past_one_million(precise):
    rope = RopeConfig(rotary_dim=128, base=500000.0)
    positions = torch.tensor([0, 2**20 + 1, 2**21, 3_000_017, 2**24 + 3])
    q = torch.randn(len(positions), 8, 128)
    q_ref = q.clone()
    reference.rotary_embedding(q_ref, None, positions, rope, precise=precise)
    qc, pc = _cuda(q, positions)
    ops.rotary_embedding(qc, None, pc, rope, precise=precise)
    torch.testing.assert_close(qc.cpu(), q_ref, **TOL[torch.float32])


def test_rotary_dynamic_base_per_sequence():
    rope = RopeConfig(rotary_dim=64, scaling_type="dynamic", factor=2.0, max_position_embeddings=256)
    lens = [5, 700, 300]
    cu = torch.tensor([0, 5, 705, 1005], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lens])
    q = torch.randn(1005, 8, 64)
    for kw in (dict(cu_seqlens=cu), dict(cu_seqlens=cu, rope_seq_lens=torch.tensor([5, 1024, 300]))):
        q_ref, qc = q.clone(), q.cuda()
        reference.rotary_embedding(q_ref, None, positions, rope, **kw)
        ops.rotary_embedding(qc, None, positions.cuda(), rope, **{n: v.cuda() for n, v in kw.items()})
        torch.testing.assert_close(qc.cpu(), q_ref, **TOL[torch.float32])


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_and_cache(block_size, dtype):
    T, Hkv, D, num_blocks = 37, 2, 128, max(2, 64 // block_size + 1)
    key, value = torch.randn(T, Hkv, D, dtype=dtype), torch.randn(T, Hkv, D, dtype=dtype)
    slots = torch.randperm(num_blocks * block_size)[:T]
    slots[::5] = -1
    k_ref = torch.full((num_blocks, block_size, Hkv, D), float("nan"), dtype=dtype)
    v_ref = k_ref.clone()
    kc, vc = k_ref.cuda(), v_ref.cuda()
    reference.reshape_and_cache(key, value, k_ref, v_ref, slots)
    ops.reshape_and_cache(key.cuda(), value.cuda(), kc, vc, slots.cuda())
    assert torch.equal(kc.cpu().nan_to_num(7.0), k_ref.nan_to_num(7.0))
    assert torch.equal(vc.cpu().nan_to_num(7.0), v_ref.nan_to_num(7.0))


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_rotary_and_cache(block_size, dtype):
    T, Hq, Hkv, D = 29, 8, 2, 128
    rope = RopeConfig(rotary_dim=D, scaling_type="dynamic", factor=2.0, max_position_embeddings=8)
    num_blocks = max(2, 64 // block_size + 1)
    q, k, v = (torch.randn(T, h, D, dtype=dtype) for h in (Hq, Hkv, Hkv))
    slots = torch.randperm(num_blocks * block_size)[:T]
    slots[::5] = -1
    cu = torch.tensor([0, 10, 29], dtype=torch.int32)
    positions = torch.cat([torch.arange(10), torch.arange(100, 119)])
    lens = torch.tensor([10, 200])
    kc_ref = torch.full((num_blocks, block_size, Hkv, D), float("nan"), dtype=dtype)
    vc_ref = kc_ref.clone()
    kc, vc = kc_ref.cuda(), vc_ref.cuda()
    q_ref, k_ref = q.clone(), k.clone()
    reference.rotary_embedding_and_cache(
        q_ref, k_ref, v, kc_ref, vc_ref, slots, positions, rope, cu_seqlens=cu, rope_seq_lens=lens
    )
    qc, kk = q.cuda(), k.cuda()
    ops.rotary_embedding_and_cache(
        qc, kk, v.cuda(), kc, vc, slots.cuda(), positions.cuda(), rope, cu_seqlens=cu.cuda(), rope_seq_lens=lens.cuda()
    )
    torch.testing.assert_close(qc.cpu(), q_ref, **TOL[dtype])
    torch.testing.assert_close(kc.cpu().nan_to_num(7.0), kc_ref.nan_to_num(7.0), **TOL[dtype])
    assert torch.equal(vc.cpu().nan_to_num(7.0), vc_ref.nan_to_num(7.0))


def _check_attention(batch, **kwargs):
    query = batch[0]
    scale = query.shape[-1] ** -0.5
    out = ops.paged_attention(*_cuda(*batch), scale, **{k: _cuda(v)[0] for k, v in kwargs.items()}).cpu()
    exact = reference.paged_attention(*batch, scale, **kwargs)
    same = reference.paged_attention(
        *batch, scale, compute_dtype=torch.float32 if query.dtype == torch.float32 else query.dtype, **kwargs
    )
    err, pt_err = (out.double() - exact).abs().max().item(), (same.double() - exact).abs().max().item()
    floor = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[query.dtype]
    assert torch.isfinite(out).all()
    assert err <= 2 * pt_err + floor, f"error {err:.3g} vs PyTorch same-dtype error {pt_err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("gqa", [1, 4, 8])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_attention_mixed_batch(dtype, head_dim, gqa, block_size):
    seq_lens = [block_size + 1, 3 * block_size - 1 if block_size > 1 else 37, 300]
    _check_attention(make_paged_batch(seq_lens, [1, seq_lens[1], 45], 2 * gqa, 2, head_dim, block_size, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gqa", [1, 4, 8])
def test_attention_decode_long_and_many(dtype, gqa):
    _check_attention(make_paged_batch([5000, 1, 17, 257, 1000], [1] * 5, 2 * gqa, 2, 128, 16, dtype))


@pytest.mark.parametrize("window", [1, 16, 100])
@pytest.mark.parametrize("decode", [True, False])
def test_attention_window_and_alibi(window, decode):
    batch = make_paged_batch([130, 90], [1, 1] if decode else [1, 90], 8, 2, 64, 16, torch.float32)
    _check_attention(batch, sliding_window=window)
    _check_attention(batch, alibi_slopes=torch.rand(8))


def test_attention_positions_past_one_million_keys():
    """One decode over 2^20 + 5 cached keys (split-K over ~2,000 partitions)."""
    n = 2**20 + 5
    bs, D = 256, 64
    nb = (n + bs - 1) // bs
    k_cache = torch.randn(nb + 1, bs, 1, D, device="cuda")
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(nb + 1, device="cuda")[:nb].int()[None]
    q = torch.randn(1, 4, D, device="cuda")
    sl = torch.tensor([n], dtype=torch.int32, device="cuda")
    cu = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
    out = ops.paged_attention(q, k_cache, v_cache, table, sl, cu, D**-0.5)
    keys = k_cache[table[0].long()].reshape(-1, 1, D)[:n, 0]
    vals = v_cache[table[0].long()].reshape(-1, 1, D)[:n, 0]
    p = torch.softmax((q[0].double() @ keys.double().T) * D**-0.5, dim=-1)
    torch.testing.assert_close(out[0].double(), p @ vals.double(), atol=1e-5, rtol=1e-4)


# ---- quantized KV caches (issue 12): int8 (per slot and head scale, zero) and float8_e4m3fn (per-head scales) ------

QDTYPES = [torch.int8, torch.float8_e4m3fn]


def _quant_args(qdtype, num_blocks, block_size, Hkv, D):
    return quant_caches(num_blocks, block_size, Hkv, D, qdtype)


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
def test_reshape_and_cache_quantized(qdtype, block_size, dtype, head_dim):
    """The bytes of lmx.reference's quantization (int8 values and (scale, zero); fp8 codes), bit for bit."""
    T, Hkv, num_blocks = 37, 2, max(2, 64 // block_size + 1)
    key, value = (torch.randn(T, Hkv, head_dim) * 3).to(dtype), torch.randn(T, Hkv, head_dim).to(dtype)
    key[2, 1] = 0.5
    value[4, 0, 3] = float("nan")
    slots = torch.randperm(num_blocks * block_size)[:T]
    slots[::5] = -1
    k_ref, v_ref, ks_ref, vs_ref = _quant_args(qdtype, num_blocks, block_size, Hkv, head_dim)
    kc, vc, ks, vs = _cuda(k_ref, v_ref, ks_ref, vs_ref)
    reference.reshape_and_cache(key, value, k_ref, v_ref, slots, ks_ref, vs_ref)
    ops.reshape_and_cache(key.cuda(), value.cuda(), kc, vc, slots.cuda(), k_scales=ks, v_scales=vs)
    torch.cuda.synchronize()
    assert same(kc.cpu(), k_ref) and same(vc.cpu(), v_ref) and same(ks.cpu(), ks_ref) and same(vs.cpu(), vs_ref)


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_rotary_and_cache_quantized(qdtype, block_size, dtype):
    """The rotated key as the op leaves it, quantized: the caches equal the reference's reshape_and_cache of it.
    Positions past 1M with a per-sequence dynamic NTK base."""
    T, Hq, Hkv, D = 29, 8, 2, 128
    rope = RopeConfig(rotary_dim=D, scaling_type="dynamic", factor=2.0, max_position_embeddings=8)
    num_blocks = max(2, 64 // block_size + 1)
    q, k, v = (torch.randn(T, h, D, dtype=dtype) for h in (Hq, Hkv, Hkv))
    slots = torch.randperm(num_blocks * block_size)[:T]
    slots[::5] = -1
    cu = torch.tensor([0, 10, 29], dtype=torch.int32)
    positions = torch.cat([torch.arange(10), torch.arange(2**20 + 100, 2**20 + 119)])
    lens = torch.tensor([10, 2**20 + 200])
    k_ref, v_ref, ks_ref, vs_ref = _quant_args(qdtype, num_blocks, block_size, Hkv, D)
    kc, vc, ks, vs = _cuda(k_ref, v_ref, ks_ref, vs_ref)
    q_ref, kr = q.clone(), k.clone()
    reference.rotary_embedding(q_ref, kr, positions, rope, cu_seqlens=cu, rope_seq_lens=lens)
    qc, kk = q.cuda(), k.cuda()
    ops.rotary_embedding_and_cache(
        qc,
        kk,
        v.cuda(),
        kc,
        vc,
        slots.cuda(),
        positions.cuda(),
        rope,
        cu_seqlens=cu.cuda(),
        rope_seq_lens=lens.cuda(),
        k_scales=ks,
        v_scales=vs,
    )
    torch.testing.assert_close(kk.cpu(), kr, **TOL[dtype])
    reference.reshape_and_cache(kk.cpu(), v, k_ref, v_ref, slots, ks_ref, vs_ref)
    assert same(kc.cpu(), k_ref) and same(vc.cpu(), v_ref) and same(ks.cpu(), ks_ref) and same(vs.cpu(), vs_ref)


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("gqa", [1, 4, 8])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_attention_quantized_mixed_batch(qdtype, dtype, head_dim, gqa, block_size):
    """A decode, a prompt and a chunk (prefill kernels: tensor cores for fp16 / bf16 with K / V dequantized into
    the tiles), then the same sequences decoding (split-K decode kernel)."""
    seq_lens = [block_size + 1, 3 * block_size - 1 if block_size > 1 else 37, 300]
    batch = make_paged_batch(seq_lens, [1, seq_lens[1], 45], 2 * gqa, 2, head_dim, block_size, dtype)
    qb, scales = quantize_batch(batch, qdtype)
    _check_attention(qb, **scales)
    qb, scales = quantize_batch(make_paged_batch(seq_lens, [1, 1, 1], 2 * gqa, 2, head_dim, block_size, dtype), qdtype)
    _check_attention(qb, **scales)


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("window", [-1, 1, 100])
def test_attention_quantized_long_decode(qdtype, window):
    qb, scales = quantize_batch(
        make_paged_batch([5000, 1, 17, 257, 1000], [1] * 5, 8, 2, 128, 16, torch.bfloat16), qdtype
    )
    _check_attention(qb, sliding_window=window, **scales)


@pytest.mark.parametrize("qdtype", QDTYPES)
def test_attention_quantized_past_one_million_keys(qdtype):
    """One decode over 2^20 + 5 int8 / fp8 cached keys (split-K over ~2,000 partitions) against float64 attention
    on the dequantized keys and values."""
    n, bs, D = 2**20 + 5, 256, 64
    nb = (n + bs - 1) // bs
    k32 = torch.randn(nb + 1, bs, 1, D, device="cuda")
    v32 = torch.randn_like(k32)
    if qdtype == torch.int8:
        kq, vq = torch.empty_like(k32, dtype=torch.int8), torch.empty_like(k32, dtype=torch.int8)
        ks = torch.empty(nb + 1, bs, 1, 2, device="cuda")
        vs = torch.empty_like(ks)
    else:
        kq, vq = torch.empty_like(k32, dtype=torch.float8_e4m3fn), torch.empty_like(k32, dtype=torch.float8_e4m3fn)
        ks, vs = torch.tensor([0.01], device="cuda"), torch.tensor([0.012], device="cuda")
    slots = torch.arange((nb + 1) * bs, device="cuda")
    ops.reshape_and_cache(k32.view(-1, 1, D), v32.view(-1, 1, D), kq, vq, slots, k_scales=ks, v_scales=vs)
    table = torch.randperm(nb + 1, device="cuda")[:nb].int()[None]
    q = torch.randn(1, 4, D, device="cuda")
    sl = torch.tensor([n], dtype=torch.int32, device="cuda")
    cu = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
    out = ops.paged_attention(q, kq, vq, table, sl, cu, D**-0.5, k_scales=ks, v_scales=vs)
    kd, vd = reference.dequantize_cache(kq, ks), reference.dequantize_cache(vq, vs)
    keys = kd[table[0].long()].reshape(-1, 1, D)[:n, 0]
    vals = vd[table[0].long()].reshape(-1, 1, D)[:n, 0]
    p = torch.softmax((q[0].double() @ keys.double().T) * D**-0.5, dim=-1)
    torch.testing.assert_close(out[0].double(), p @ vals.double(), atol=1e-5, rtol=1e-4)
