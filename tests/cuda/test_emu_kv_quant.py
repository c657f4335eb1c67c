"""Emulated CUDA kernels with int8 / float8_e4m3fn KV caches (issue 12) against lmx.reference.

Cache writes (reshape_and_cache, the fused rotary + cache write) must give the reference's bytes exactly: int8
values and their (scale, zero), fp8 bytes. Paged attention on quantized caches (decode split-K, CUDA-core prefill,
tensor-core prefill with K / V dequantized into fp16 / bf16 tiles) must meet tests/helpers.check_attention's rule
against the reference on the same quantized caches. Unused cache slots hold NaN (fp8) or garbage values with NaN
scales (int8), so a kernel that reads one fails. Every grid runs under several thread schedules.
"""

import pytest
import torch

from lmx import reference
from lmx.rope import RopeConfig

from ..helpers import check_attention, make_paged_batch, random_slots, rope_tol
from . import emu
from .quant import QDTYPES, as_bytes, qname, quant_caches, quantize_batch, same

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEAD_DIMS = [16, 32, 64, 80, 96, 112, 128, 160, 192, 256]
GQA_RATIOS = [1, 4, 8]
BLOCK_SIZES = [1, 16, 256]


@pytest.fixture(autouse=True, scope="module")
def _module():
    emu.module()


def _attend(batch, scales, kernel="auto", partition_size=0, **kwargs):
    query = batch[0]
    scale = query.shape[-1] ** -0.5
    out = emu.paged_attention(*batch, scale, kernel=kernel, partition_size=partition_size, **scales, **kwargs)
    ran = emu.module().last_attention_kernel()
    if kernel in ("decode", "prefill-simt", "prefill-wmma"):
        assert ran == kernel
    check_attention(out, *batch, scale, label=f"{kernel} ({ran}): ", **scales, **kwargs)
    return out, ran


# ---- cache writes ------------------------------------------------------------------------------------------------

RESHAPE_CASES = emu.cover(
    dict(qdtype=QDTYPES, block_size=BLOCK_SIZES, head_dim=HEAD_DIMS, dtype=DTYPES, sched=emu.SCHEDULES),
    [
        ("qdtype", "dtype", "block_size"),
        ("qdtype", "head_dim"),
        ("head_dim", "block_size"),
        ("sched", "qdtype"),
        ("sched", "dtype"),
    ],
)


@pytest.mark.parametrize("qdtype,block_size,head_dim,dtype,sched", RESHAPE_CASES, ids=emu.ids(RESHAPE_CASES))
def test_reshape_and_cache(qdtype, block_size, head_dim, dtype, sched):
    T, Hkv, num_blocks = 37, 3, max(2, 64 // block_size + 1)
    key = (torch.randn(T, Hkv, head_dim) * 3).to(dtype)
    value = (torch.randn(T, Hkv, head_dim) + 2).to(dtype)
    key[3, 1] = 0.25  # a constant row: scale 0, zero 0.25
    value[7, 0, 5] = float("nan")  # a row with NaN: NaN scales (int8), NaN stays NaN (fp8)
    key[8, 2, 0] = float("inf")
    slots = random_slots(T, num_blocks, block_size)
    k_ref, v_ref, ks_ref, vs_ref = quant_caches(num_blocks, block_size, Hkv, head_dim, qdtype)
    k, v, ks, vs = (x.clone() for x in (k_ref, v_ref, ks_ref, vs_ref))
    reference.reshape_and_cache(key, value, k_ref, v_ref, slots, ks_ref, vs_ref)
    with emu.schedule(*sched):
        emu.reshape_and_cache(key, value, k, v, slots, ks, vs)
    assert same(k, k_ref) and same(v, v_ref)
    assert same(ks, ks_ref) and same(vs, vs_ref)  # int8: the written (scale, zero); fp8: untouched


def test_int8_rows_at_the_edges():
    """Constant rows, a non-finite value, hi - lo overflowing fp32, one outlier, tiny ranges, exact ties of the
    rounding: the same int8 values and (scale, zero) as the reference, bit for bit."""
    D = 64
    rows = [
        torch.full((D,), -3.5),
        torch.zeros(D),
        torch.linspace(-3e38, 3e38, D),  # hi - lo = inf: NaN scale
        torch.cat([torch.zeros(D - 1), torch.tensor([1000.0])]),
        torch.linspace(1.0, 1.0 + 2**-20, D),
        torch.arange(D, dtype=torch.float32) * (255.0 / (D - 1)) * 0.5,  # many x.5 quotients (ties)
        torch.arange(D, dtype=torch.float32) - 10.0,
        torch.full((D,), float("-inf")),
        torch.randn(D) * 1e-30,
        torch.randn(D) * 1e30,
    ]
    key = torch.stack(rows)[:, None]  # [T, 1, D]
    value = key.flip(0).clone()
    T = key.shape[0]
    k_ref, v_ref, ks_ref, vs_ref = quant_caches(T, 1, 1, D, torch.int8)
    k, v, ks, vs = (x.clone() for x in (k_ref, v_ref, ks_ref, vs_ref))
    slots = torch.arange(T)
    reference.reshape_and_cache(key, value, k_ref, v_ref, slots, ks_ref, vs_ref)
    emu.reshape_and_cache(key, value, k, v, slots, ks, vs)
    assert same(k, k_ref) and same(v, v_ref) and same(ks, ks_ref) and same(vs, vs_ref)
    assert ks[2, 0, 0].isnan().all() and (k[2] == 0).all()
    assert ks[0, 0, 0, 0] == 0 and ks[0, 0, 0, 1] == -3.5 and (k[0] == 0).all()


@pytest.mark.parametrize("scale", [1.0, 0.37, 2.0**-7])
def test_fp8_encoding_is_torchs(scale):
    """Every e4m3 grid point, every midpoint (ties to even), one fp32 ulp either side of each, subnormals, the
    clamp at +-448, +-inf, NaN and -0: the kernel's bytes are torch's (x / s).clamp(-448, 448).to(float8_e4m3fn)."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite()].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    vals = torch.cat([grid, mids, mids.nextafter(torch.tensor(float("inf"))), mids.nextafter(torch.tensor(-1e30))])
    vals = torch.cat([vals, torch.tensor([449.0, 464.0, 470.0, 480.0, 1e6, float("inf"), -float("inf"), -0.0, 1e-40])])
    vals = torch.cat([vals, torch.tensor([float("nan")])])
    x = vals * scale
    D = 256
    T = (len(x) + D - 1) // D
    key = torch.zeros(T * D)
    key[: len(x)] = x
    key = key.view(T, 1, D)
    value = -key
    s = torch.tensor([scale], dtype=torch.float32)
    k, v, ks, vs = quant_caches(T, 1, 1, D, torch.float8_e4m3fn, fp8_scales=s)
    vs = s.clone()
    emu.reshape_and_cache(key, value, k, v, torch.arange(T), ks, vs)
    expect_k = (key / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    expect_v = (value / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(as_bytes(k.view(T, 1, D)), as_bytes(expect_k))
    assert torch.equal(as_bytes(v.view(T, 1, D)), as_bytes(expect_v))


FUSED_CASES = emu.cover(
    dict(
        qdtype=QDTYPES,
        block_size=BLOCK_SIZES,
        scaling=["default", "dynamic", "llama3"],
        dtype=DTYPES,
        rotary=["full-neox", "partial-interleaved"],
        sched=emu.SCHEDULES,
    ),
    [
        ("qdtype", "scaling", "dtype"),
        ("qdtype", "rotary"),
        ("qdtype", "block_size"),
        ("block_size", "dtype"),
        ("sched", "qdtype"),
        ("sched", "dtype"),
    ],
)


@pytest.mark.parametrize("qdtype,block_size,scaling,dtype,rotary,sched", FUSED_CASES, ids=emu.ids(FUSED_CASES))
def test_fused_rotary_and_cache(qdtype, block_size, scaling, dtype, rotary, sched):
    """The fused op quantizes the rotated key as it leaves it in `key` (and the value): the caches equal the
    reference's reshape_and_cache of those, bit for bit; query / key match the reference's rotation. Positions of
    the second sequence are past 1M (dynamic NTK base from rope_seq_lens)."""
    T, Hq, Hkv, D = 29, 8, 2, 128
    kw = dict(factor=2.0) if scaling == "dynamic" else {}
    if scaling == "llama3":
        kw = dict(factor=8.0, original_max_position_embeddings=16)
    rotary_dim, is_neox = (D, True) if rotary == "full-neox" else (64, False)
    rope = RopeConfig(rotary_dim=rotary_dim, scaling_type=scaling, max_position_embeddings=8, is_neox=is_neox, **kw)
    num_blocks = max(2, 64 // block_size + 1)
    q, k, v = (torch.randn(T, h, D, dtype=dtype) for h in (Hq, Hkv, Hkv))
    slots = random_slots(T, num_blocks, block_size)
    cu = torch.tensor([0, 10, 29], dtype=torch.int32)
    positions = torch.cat([torch.arange(10), torch.arange(2**20 + 100, 2**20 + 119)])
    kwargs = dict(cu_seqlens=cu, rope_seq_lens=torch.tensor([10, 2**20 + 200]))
    q_ref, k_ref = q.clone(), k.clone()
    kc, vc, ks, vs = quant_caches(num_blocks, block_size, Hkv, D, qdtype)
    kc_ref, vc_ref, ks_ref, vs_ref = (x.clone() for x in (kc, vc, ks, vs))
    reference.rotary_embedding(q_ref, k_ref, positions, rope, **kwargs)
    with emu.schedule(*sched):
        emu.rotary_embedding_and_cache(q, k, v, kc, vc, slots, positions, rope, k_scales=ks, v_scales=vs, **kwargs)
    tol = rope_tol(dtype)
    torch.testing.assert_close(q, q_ref, **tol)
    torch.testing.assert_close(k, k_ref, **tol)
    reference.reshape_and_cache(k, v, kc_ref, vc_ref, slots, ks_ref, vs_ref)  # the key the op left
    assert same(kc, kc_ref) and same(vc, vc_ref) and same(ks, ks_ref) and same(vs, vs_ref)


# ---- paged attention ---------------------------------------------------------------------------------------------

ATT_AXES = dict(
    qdtype=QDTYPES,
    dtype=DTYPES,
    head_dim=HEAD_DIMS,
    gqa=GQA_RATIOS,
    block_size=BLOCK_SIZES,
    kernel=["decode", "prefill", "prefill-simt"],
    sched=emu.SCHEDULES,
)
ATT_GRID = emu.cover(
    ATT_AXES,
    [
        ("qdtype", "dtype", "kernel"),
        ("qdtype", "head_dim"),
        ("qdtype", "gqa", "block_size"),
        ("kernel", "head_dim"),
        ("kernel", "block_size"),
        ("kernel", "gqa"),
        ("sched", "qdtype"),
        ("sched", "kernel"),
    ],
)


@pytest.mark.parametrize("qdtype,dtype,head_dim,gqa,block_size,kernel,sched", ATT_GRID, ids=emu.ids(ATT_GRID))
def test_attention(qdtype, dtype, head_dim, gqa, block_size, kernel, sched):
    """decode: one query per sequence, 128-key partitions (the longer sequences split and merged); prefill (the
    glue's choice: tensor cores for fp16 / bf16) and prefill-simt: a decode, a whole prompt and a chunk at the end
    of a 300-token sequence in one call. Lengths cross block boundaries."""
    if kernel == "decode":
        seq_lens = [1, block_size + 1, 3 * block_size - 1 if block_size > 1 else 37, 300]
        query_lens = [1] * len(seq_lens)
    else:
        seq_lens = [block_size + 1, 2 * block_size + 3 if block_size > 1 else 37, 300]
        query_lens = [1, seq_lens[1], 45]
    batch, scales = quantize_batch(
        make_paged_batch(seq_lens, query_lens, 2 * gqa, 2, head_dim, block_size, dtype), qdtype
    )
    with emu.schedule(*sched):
        _, ran = _attend(batch, scales, kernel=kernel, partition_size=128 if kernel == "decode" else 0)
    if kernel == "prefill":
        assert ran == ("prefill-simt" if dtype == torch.float32 else "prefill-wmma")


WMMA_GRID = emu.cover(
    dict(
        qdtype=QDTYPES,
        dtype=[torch.bfloat16, torch.float16],
        head_dim=[64, 80, 128, 256],
        gqa=GQA_RATIOS,
        bias=["none", "alibi", "window"],
        sched=emu.SCHEDULES,
    ),
    [("qdtype", "dtype", "head_dim"), ("qdtype", "gqa"), ("qdtype", "bias"), ("sched", "qdtype"), ("sched", "bias")],
)


@pytest.mark.parametrize("qdtype,dtype,head_dim,gqa,bias,sched", WMMA_GRID, ids=emu.ids(WMMA_GRID))
def test_prefill_wmma(qdtype, dtype, head_dim, gqa, bias, sched):
    """The tensor-core prefill kernel on quantized caches: K / V tiles dequantized in fp32 and rounded to the
    activation dtype in shared memory."""
    batch = make_paged_batch([300, 35, 20], [70, 35, 1], 2 * gqa, 2, head_dim, 16, dtype)
    batch, scales = quantize_batch(batch, qdtype)
    kw = {}
    if bias == "alibi":
        kw["alibi_slopes"] = torch.tensor([2 ** (-8 * (h + 1) / (2 * gqa)) for h in range(2 * gqa)])
    elif bias == "window":
        kw["sliding_window"] = 50
    with emu.schedule(*sched):
        _attend(batch, scales, kernel="prefill-wmma", **kw)


BIAS_CASES = emu.cover(
    dict(
        qdtype=QDTYPES,
        kernel=["decode", "prefill-simt"],
        bias=["alibi", "window-1", "window-16", "window-100"],
        sched=emu.SCHEDULES[:3],
    ),
    [("qdtype", "kernel", "bias"), ("sched", "kernel")],
)


@pytest.mark.parametrize("qdtype,kernel,bias,sched", BIAS_CASES, ids=emu.ids(BIAS_CASES))
def test_alibi_and_sliding_window(qdtype, kernel, bias, sched):
    batch = make_paged_batch([130, 90], [1, 1] if kernel == "decode" else [1, 90], 8, 2, 64, 16, torch.float32)
    batch, scales = quantize_batch(batch, qdtype)
    kw = dict(alibi_slopes=torch.rand(8)) if bias == "alibi" else dict(sliding_window=int(bias.split("-")[1]))
    with emu.schedule(*sched):
        _attend(batch, scales, kernel=kernel, partition_size=64, **kw)


@pytest.mark.parametrize("qdtype", QDTYPES, ids=qname)
@pytest.mark.parametrize("partition_size", [0, 320])
def test_long_decode_uses_splits(qdtype, partition_size):
    """5,000 keys: 10 default partitions (512) or 16 of 320, merged in fp32."""
    batch, scales = quantize_batch(make_paged_batch([5000], [1], 8, 1, 128, 16, torch.bfloat16), qdtype)
    _attend(batch, scales, kernel="decode", partition_size=partition_size)


@pytest.mark.parametrize("heads", [(9, 3), (12, 1), (14, 2)])
def test_decode_partial_head_chunks(heads):
    seq_lens = [1, 2, 15, 16, 17, 255, 256, 257, 1000, 3]
    batch = make_paged_batch(seq_lens, [1] * len(seq_lens), *heads, 64, 16, torch.float32)
    for qdtype in QDTYPES:
        qb, scales = quantize_batch(batch, qdtype)
        _attend(qb, scales, kernel="decode", partition_size=256)


@pytest.mark.parametrize("qdtype", QDTYPES, ids=qname)
@pytest.mark.parametrize("kernel", ["decode", "prefill-simt", "prefill-wmma"])
def test_positions_past_one_million(qdtype, kernel):
    """A sequence of 2^20 + 37 cached keys with a 100-key window: the queries at positions past 1M see only the
    last keys, which the kernels find through a 4,097-block table; the result equals the reference on a compact
    cache holding just the keys the window sees (no bias depends on absolute positions)."""
    L, W, bs, D, Hq, Hkv = 2**20 + 37, 100, 256, 64, 4, 2
    n_q = 1 if kernel == "decode" else 5
    dtype = torch.bfloat16 if kernel == "prefill-wmma" else torch.float32
    n_blocks = (L + bs - 1) // bs
    tail = W + n_q - 1  # keys any query sees: [L - tail, L)
    first_blk = (L - tail) // bs
    real = n_blocks - first_blk  # blocks that hold real keys; the rest of the table points at block 0
    k32 = torch.full((real + 2, bs, Hkv, D), float("nan"))
    v32 = k32.clone()
    k32[1 : real + 1] = torch.randn(real, bs, Hkv, D)
    v32[1 : real + 1] = torch.randn(real, bs, Hkv, D)
    k32[0] = torch.randn(bs, Hkv, D)  # block 0: finite filler for the far past
    v32[0] = torch.randn(bs, Hkv, D)
    table = torch.zeros(1, n_blocks, dtype=torch.int32)
    table[0, first_blk:] = torch.arange(1, real + 1, dtype=torch.int32)
    query = torch.randn(n_q, Hq, D).to(dtype)
    batch = (
        query,
        k32.to(dtype),
        v32.to(dtype),
        table,
        torch.tensor([L], dtype=torch.int32),
        torch.tensor([0, n_q], dtype=torch.int32),
    )
    (q, kq, vq, bt, sl, cu), scales = quantize_batch(batch, qdtype)
    scale = D**-0.5
    out = emu.paged_attention(q, kq, vq, bt, sl, cu, scale, sliding_window=W, kernel=kernel, **scales)
    # The compact equivalent: block size 1, the last `tail` keys in order.
    slots = bt[0].long()[torch.arange(L - tail, L) // bs] * bs + torch.arange(L - tail, L) % bs
    nbq, bsq = kq.shape[:2]

    def rows(c):  # through the bytes: indexing does not take float8 tensors
        return as_bytes(c).view(nbq * bsq, 1, Hkv, D)[slots].view(c.dtype)

    def srows(s):
        return s.view(nbq * bsq, 1, Hkv, 2)[slots] if qdtype == torch.int8 else s

    compact = (
        q,
        rows(kq),
        rows(vq),
        torch.arange(tail, dtype=torch.int32)[None],
        torch.tensor([tail], dtype=torch.int32),
        cu,
    )
    cscales = dict(k_scales=srows(scales["k_scales"]), v_scales=srows(scales["v_scales"]))
    check_attention(out, *compact, scale, label=f"{kernel}: ", sliding_window=W, **cscales)


@pytest.mark.parametrize("kernel", ["decode", "prefill-simt"])
@pytest.mark.parametrize("qdtype", QDTYPES, ids=qname)
def test_one_key_gives_the_dequantized_value_exactly(qdtype, kernel):
    """With one visible key, softmax is exactly 1: the fp32 output is the dequantized value row, bit for bit, for
    every int8 value (q * scale + zero) and every finite fp8 code (float(e4m3) * s)."""
    D, Hkv = 256, 2
    kq, vq, ks, vs = quant_caches(2, 1, Hkv, D, qdtype)
    if qdtype == torch.int8:
        vq[1] = torch.arange(-128, 128, dtype=torch.int8)[torch.randperm(256)]
        kq[1] = torch.randint(-128, 128, (Hkv, D), dtype=torch.int8)
        ks[1, 0] = torch.tensor([[0.0123, -0.5], [3.0e-3, 7.25]])
        vs[1, 0] = torch.tensor([[0.0371, 1.5], [1.0e-5, -2.0]])
    else:
        codes = torch.arange(256, dtype=torch.uint8)
        codes[codes == 0x7F] = 0
        codes[codes == 0xFF] = 0x80
        vq.view(torch.uint8)[1] = codes[torch.randperm(256)]
        kq.view(torch.uint8)[1] = torch.randint(0, 0x7F, (Hkv, D), dtype=torch.uint8)
        vs = torch.tensor([0.37, 1.0e-3])
    q = torch.randn(1, 2 * Hkv, D)
    args = (
        q,
        kq,
        vq,
        torch.tensor([[1]], dtype=torch.int32),
        torch.tensor([1], dtype=torch.int32),
        torch.tensor([0, 1], dtype=torch.int32),
    )
    out = emu.paged_attention(*args, 0.0625, kernel=kernel, k_scales=ks, v_scales=vs)
    v_hat = reference.dequantize_cache(vq[1, 0], vs[1, 0] if qdtype == torch.int8 else vs)  # [Hkv, D]
    assert torch.equal(out[0], v_hat.repeat_interleave(2, dim=0))


@pytest.mark.parametrize("kernel", ["decode", "prefill-simt", "prefill-wmma"])
def test_nan_row_gives_nan_like_the_float_cache(kernel):
    """A visible key whose row had a NaN (int8: NaN scale and zero) makes the output NaN, as it does with the
    unquantized cache; other sequences of the batch are unaffected."""
    dtype = torch.bfloat16 if kernel == "prefill-wmma" else torch.float32
    q, kc, vc, bt, sl, cu = make_paged_batch([20, 20], [1, 1] if kernel == "decode" else [20, 20], 2, 1, 64, 16, dtype)
    kc[bt[0, 0], 3, 0, 7] = float("nan")  # key 3 of sequence 0
    for qdtype in QDTYPES:
        (q2, kq, vq, bt2, sl2, cu2), scales = quantize_batch((q, kc, vc, bt, sl, cu), qdtype)
        out = emu.paged_attention(q2, kq, vq, bt2, sl2, cu2, 0.125, kernel=kernel, **scales)
        n0 = int(cu[1])
        rows0 = out[:n0] if kernel == "decode" else out[3:n0]  # queries that see key 3
        assert rows0.isnan().all()
        assert out[n0:].isfinite().all()


def test_bad_scales_raise_the_ops_errors():
    """The emulated glue runs the ops' own checks (csrc/checks.h): missing, wrong-shape and wrong-dtype scales,
    non-positive fp8 scales, mixed cache dtypes."""
    key = torch.randn(4, 2, 64)
    kq, vq, ks, vs = quant_caches(2, 16, 2, 64, torch.int8)
    slots = torch.arange(4)
    with pytest.raises(ValueError, match="lmx.reshape_and_cache: k_scales"):
        emu.reshape_and_cache(key, key, kq, vq, slots, None, vs)
    with pytest.raises((ValueError, TypeError), match="lmx.reshape_and_cache: v_scales"):
        emu.reshape_and_cache(key, key, kq, vq, slots, ks, vs[:1])
    with pytest.raises((ValueError, TypeError), match="lmx.reshape_and_cache: k_scales"):
        emu.reshape_and_cache(key, key, kq, vq, slots, ks.double(), vs)
    fk, fv, fks, fvs = quant_caches(2, 16, 2, 64, torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="lmx.reshape_and_cache: k_scales"):
        emu.reshape_and_cache(key, key, fk, fv, slots, torch.tensor([0.1, 0.0]), fvs)
    with pytest.raises((ValueError, TypeError), match="lmx.reshape_and_cache"):
        emu.reshape_and_cache(key, key, kq, fv, slots, ks, fvs)
    q = torch.randn(1, 4, 64)
    bt, sl, cu = (
        torch.tensor([[0]], dtype=torch.int32),
        torch.tensor([5], dtype=torch.int32),
        torch.tensor([0, 1], dtype=torch.int32),
    )
    with pytest.raises(ValueError, match="lmx.paged_attention: k_scales"):
        emu.paged_attention(q, kq, vq, bt, sl, cu, 0.125, v_scales=vs)
    with pytest.raises(ValueError, match="lmx.paged_attention: v_scales"):
        emu.paged_attention(q, fk, fv, bt, sl, cu, 0.125, k_scales=fks, v_scales=torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="lmx.paged_attention"):  # scales for a float cache
        emu.paged_attention(
            q, torch.zeros(2, 16, 2, 64), torch.zeros(2, 16, 2, 64), bt, sl, cu, 0.125, k_scales=ks, v_scales=vs
        )


def test_misaligned_quantized_cache_is_refused():
    """The decode kernel reads int8 / fp8 keys four bytes at a time: a cache view two bytes off is refused with the
    argument named (the 16-bit caches need two elements' alignment, as before)."""
    batch, scales = quantize_batch(make_paged_batch([20], [1], 2, 1, 64, 16, torch.float32), torch.int8)
    q, kq, vq, bt, sl, cu = batch
    buf = torch.empty(kq.numel() + 2, dtype=torch.int8)
    shifted = buf[2:].view(kq.shape)
    shifted.copy_(kq)
    with pytest.raises(ValueError, match="lmx.paged_attention: k_cache: expected data aligned to 4 bytes"):
        emu.paged_attention(q, shifted, vq, bt, sl, cu, 0.125, **scales)
    out = emu.paged_attention(q, kq, vq, bt, sl, cu, 0.125, **scales)  # the aligned original runs
    assert out.isfinite().all()
