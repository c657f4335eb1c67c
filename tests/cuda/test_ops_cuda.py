"""lmx.ops on CUDA tensors against lmx.reference (marker `cuda`: skipped without a GPU, as there is none in CI).

The grids of tests/test_rotary.py, test_cache.py and test_attention.py, with the dtypes, head dims and block sizes
the CUDA kernels are built for. Written for the day a GPU exists; never run so far.
"""

import pytest
import torch

from lmx import ops, reference
from lmx.rope import RopeConfig

from ..helpers import make_paged_batch

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
