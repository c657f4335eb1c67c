"""Quantized KV caches (int8 rows with (scale, zero); float8_e4m3fn with per-head scales) against lmx.reference.

Cache writes must give the reference's bytes exactly (int8 codes may differ by one only where (x - lo) / scale
is an exact tie, which the grids never produce in practice); paged attention over a quantized cache must match
the float64 attention over the dequantized cache under FlashAttention's rule (helpers.check_attention). Unused
slots hold NaN (float / fp8 caches) or NaN scales (int8), so a kernel that reads them fails.
"""

import os
import subprocess
import sys

import pytest
import torch

from lmx import ops, reference
from lmx.rope import RopeConfig

from .helpers import check_attention, make_paged_batch, nan_caches, random_slots, rope_tol

CACHE_DTYPES = [torch.int8, torch.float8_e4m3fn]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BLOCK_SIZES = [1, 16, 256]
HEAD_DIMS = [64, 80, 96, 128, 256]
GQA_RATIOS = [1, 4, 8]


def _ids(x):
    return str(x).replace("torch.", "")


def quantize_caches(k_cache, v_cache, cache_dtype, fp8_scale=None):
    """Float caches (NaN in unused slots) as ``cache_dtype`` caches plus their scales, through the reference.

    int8: every row quantized (NaN rows give q = 0 and NaN scales); fp8: per-head scales that map each head's
    largest value to 448 / 2 (NaN rows stay NaN)."""
    if cache_dtype == torch.int8:
        kq, ks = reference.quantize_int8(k_cache)
        vq, vs = reference.quantize_int8(v_cache)
        return kq, vq, ks, vs
    if fp8_scale is None:
        ks = reference.fp8_head_scales(k_cache.nan_to_num(0.0), margin=2.0)
        vs = reference.fp8_head_scales(v_cache.nan_to_num(0.0), margin=2.0)
    else:
        ks = torch.full((k_cache.shape[2],), fp8_scale)
        vs = ks.clone()
    return reference.quantize_fp8(k_cache, ks), reference.quantize_fp8(v_cache, vs), ks, vs


def quantized_batch(seq_lens, query_lens, hq, hkv, head_dim, block_size, dtype, cache_dtype, **kw):
    q, kc, vc, bt, sl, cu = make_paged_batch(seq_lens, query_lens, hq, hkv, head_dim, block_size, torch.float32, **kw)
    kq, vq, ks, vs = quantize_caches(kc, vc, cache_dtype)
    return (q.to(dtype), kq, vq, bt, sl, cu), dict(k_scales=ks, v_scales=vs)


def _check(batch, scales, **kwargs):
    query = batch[0]
    scale = query.shape[-1] ** -0.5
    out = ops.paged_attention(*batch, scale, **scales, **kwargs)
    check_attention(out, *batch, scale, **scales, **kwargs)
    return out


def _bytes(t):
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def assert_same_codes(cache, expected, label=""):
    """Equal bytes; NaN fp8 bytes compare as bytes (0x7f / 0xff), so NaN-filled unused slots must stay NaN."""
    a, b = _bytes(cache), _bytes(expected)
    diff = (a.int() - b.int()).abs()
    assert diff.max().item() == 0, f"{label}{int((diff > 0).sum())} codes differ (max {diff.max().item()})"


def assert_same_scales(scales, expected):
    assert torch.equal(scales.isnan(), expected.isnan())
    assert torch.equal(scales.nan_to_num(0.0), expected.nan_to_num(0.0))


# ---- the reference's quantization ----------------------------------------------------------------------------


def test_int8_reference_rows():
    x = torch.randn(50, 3, 64) * torch.logspace(-3, 3, 50)[:, None, None]
    q, s = reference.quantize_int8(x)
    assert q.dtype == torch.int8 and s.shape == (50, 3, 2) and s.dtype == torch.float32
    err = (reference.dequantize_int8(q, s) - x).abs()
    assert (err <= s[..., :1] * 0.5001 + 1e-6 * x.abs().amax(-1, keepdim=True)).all()
    # the row's min and max are codes -128 and 127
    assert (q.amin(-1) == -128).all() and (q.amax(-1) == 127).all()


def test_int8_reference_special_rows():
    x = torch.randn(5, 16)
    x[0] = 2.5  # constant: scale 0, zero = the value, q = 0
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3, 0], x[3, 1] = 3e38, -3e38  # finite, but hi - lo overflows
    q, s = reference.quantize_int8(x)
    assert s[0].tolist() == [0.0, 2.5] and (q[0] == 0).all()
    for r in (1, 2, 3):
        assert s[r].isnan().all() and (q[r] == 0).all()
    assert torch.isfinite(s[4]).all()
    assert torch.equal(reference.dequantize_int8(q[0], s[0]), x[0])


def test_fp8_reference_rows():
    s = torch.tensor([0.5, 2.0])
    x = torch.tensor([[[1.0, -1000.0, float("nan"), 1e-6]], [[1.0, 1e4, -0.1, 0.0]]]).expand(2, 2, 4) * 1.0
    x = x.reshape(2, 2, 4)
    f = reference.quantize_fp8(x, s)
    back = reference.dequantize_fp8(f, s)
    assert back[0, 0, 1].item() == -448 * 0.5  # clamped
    assert back[0, 0, 2].isnan()
    assert back[1, 1, 1].item() == 448 * 2.0


# ---- cache writes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("head_dim", [16, 64, 80, 128, 256])
def test_reshape_and_cache(cache_dtype, dtype, block_size, head_dim):
    T, Hkv = 70, 3
    num_blocks = max(2, 2 * T // block_size + 1)
    key = (torch.randn(T, Hkv, head_dim) * torch.logspace(-2, 2, T)[:, None, None]).to(dtype)
    value = torch.randn(T, Hkv, head_dim).to(dtype)
    key[3, 1] = 0.75  # a constant row
    slots = random_slots(T, num_blocks, block_size)
    fk, fv = nan_caches(num_blocks, block_size, Hkv, head_dim, torch.float32)
    kc, vc, ks, vs = quantize_caches(fk, fv, cache_dtype, fp8_scale=0.05)  # all NaN: q 0 / NaN scales
    refs = [t.clone() for t in (kc, vc, ks, vs)]
    ops.reshape_and_cache(key, value, kc, vc, slots, k_scales=ks, v_scales=vs)
    reference.reshape_and_cache(key, value, refs[0], refs[1], slots, refs[2], refs[3])
    assert_same_codes(kc, refs[0], "k_cache: ")
    assert_same_codes(vc, refs[1], "v_cache: ")
    assert_same_scales(ks, refs[2])
    assert_same_scales(vs, refs[3])
    if cache_dtype == torch.int8:  # written slots have finite scales, the others stay NaN
        written = torch.zeros(num_blocks * block_size, dtype=torch.bool)
        written[slots[slots >= 0]] = True
        assert torch.isfinite(ks.view(-1, Hkv, 2)[written]).all()
        assert ks.view(-1, Hkv, 2)[~written].isnan().all()


def test_reshape_and_cache_nonfinite_rows():
    T, Hkv, D = 4, 2, 64
    key = torch.randn(T, Hkv, D)
    key[0, 0, 5] = float("nan")
    key[1, 1, 0] = float("-inf")
    key[2, 0] = 1.0
    value = torch.randn(T, Hkv, D)
    kc = torch.zeros(1, 16, Hkv, D, dtype=torch.int8)
    vc = kc.clone()
    ks, vs = ops.new_kv_scales(kc)
    ops.reshape_and_cache(key, value, kc, vc, torch.arange(T), k_scales=ks, v_scales=vs)
    assert ks[0, 0, 0].isnan().all() and ks[0, 1, 1].isnan().all() and (kc[0, 0, 0] == 0).all()
    assert ks[0, 2, 0].tolist() == [0.0, 1.0] and (kc[0, 2, 0] == 0).all()
    assert torch.isfinite(ks[0, 3]).all()


def test_reshape_and_cache_strided_input():
    T, Hkv, D = 33, 2, 64
    qkv = torch.randn(T, 3 * Hkv, D)
    key, value = qkv[:, :Hkv], qkv[:, Hkv : 2 * Hkv]
    for cache_dtype in CACHE_DTYPES:
        kc = torch.zeros(4, 16, Hkv, D, dtype=cache_dtype)
        vc = kc.clone()
        ks, vs = ops.new_kv_scales(kc, 0.1)
        refs = [t.clone() for t in (kc, vc, ks, vs)]
        ops.reshape_and_cache(key, value, kc, vc, torch.arange(T), k_scales=ks, v_scales=vs)
        reference.reshape_and_cache(key.contiguous(), value.contiguous(), *refs[:2], torch.arange(T), *refs[2:])
        assert_same_codes(kc, refs[0])
        assert_same_codes(vc, refs[1])


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("scaling", ["default", "dynamic"])
def test_fused_rotary_and_cache(cache_dtype, dtype, block_size, scaling):
    """The rotated key is quantized on its way into the cache: the cache holds exactly the reference's
    quantization of the key the op returns (which matches the reference's rotation to an ulp). Positions of the
    second sequence lie past 1M."""
    T, Hq, Hkv, D = 29, 8, 2, 128
    rope = RopeConfig(
        rotary_dim=D, scaling_type=scaling, factor=2.0 if scaling == "dynamic" else 1.0, max_position_embeddings=8
    )
    num_blocks = max(2, 64 // block_size + 1)
    q, k, v = (torch.randn(T, h, D, dtype=dtype) for h in (Hq, Hkv, Hkv))
    slots = random_slots(T, num_blocks, block_size)
    cu = torch.tensor([0, 10, 29], dtype=torch.int32)
    positions = torch.cat([torch.arange(10), torch.arange(1_048_600, 1_048_619)])
    kwargs = dict(cu_seqlens=cu, rope_seq_lens=torch.tensor([10, 1_048_619]))
    fk, fv = nan_caches(num_blocks, block_size, Hkv, D, torch.float32)
    kc, vc, ks, vs = quantize_caches(fk, fv, cache_dtype, fp8_scale=0.02)
    q_ref, k_ref = q.clone(), k.clone()
    ops.rotary_embedding_and_cache(q, k, v, kc, vc, slots, positions, rope, k_scales=ks, v_scales=vs, **kwargs)
    reference.rotary_embedding(q_ref, k_ref, positions, rope, **kwargs)
    tol = rope_tol(dtype)
    torch.testing.assert_close(q, q_ref, **tol)
    torch.testing.assert_close(k, k_ref, **tol)
    fk2, fv2 = nan_caches(num_blocks, block_size, Hkv, D, torch.float32)
    refs = list(quantize_caches(fk2, fv2, cache_dtype, fp8_scale=0.02))
    reference.reshape_and_cache(k, v, refs[0], refs[1], slots, refs[2], refs[3])  # of the op's rotated key
    assert_same_codes(kc, refs[0], "k_cache: ")
    assert_same_codes(vc, refs[1], "v_cache: ")
    assert_same_scales(ks, refs[2])
    assert_same_scales(vs, refs[3])


# ---- paged attention -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=_ids)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("gqa", GQA_RATIOS)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_mixed_batch(cache_dtype, head_dim, gqa, block_size):
    """A decode, a whole prefill and a chunk at the end of a 300-token sequence in one call; lengths cross block
    boundaries. fp32 queries everywhere; bf16 and fp16 at head dims 64 and 128."""
    seq_lens = [block_size + 1, 3 * block_size - 1 if block_size > 1 else 37, 300]
    query_lens = [1, seq_lens[1], 45]
    dtypes = DTYPES if head_dim in (64, 128) else [torch.float32]
    for dtype in dtypes:
        batch, scales = quantized_batch(seq_lens, query_lens, 2 * gqa, 2, head_dim, block_size, dtype, cache_dtype)
        _check(batch, scales)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_long_decode_uses_splits(cache_dtype, dtype):
    """5,000 and 1,300 cached tokens, decode: the key ranges are split (flash-decoding) and merged in fp32."""
    batch, scales = quantized_batch([5000, 1300], [1, 1], 9, 3, 64, 16, dtype, cache_dtype)
    _check(batch, scales)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=_ids)
@pytest.mark.parametrize("head_dim", [16, 32, 80, 112, 160, 192])
@pytest.mark.parametrize("gqa", [1, 3, 8])
def test_prefill_tiles(cache_dtype, head_dim, gqa):
    """Long prefills and chunks: several key tiles, the fp32 AVX-512 / BLAS tiles over dequantized K and V."""
    for dtype in (torch.float32, torch.bfloat16):
        batch, scales = quantized_batch([701, 301, 41], [701, 45, 17], 2 * gqa, 2, head_dim, 16, dtype, cache_dtype)
        _check(batch, scales)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=_ids)
@pytest.mark.parametrize("window", [1, 16, 100])
def test_sliding_window_and_alibi(cache_dtype, window):
    batch, scales = quantized_batch([130, 90], [1, 90], 8, 2, 64, 16, torch.float32, cache_dtype)
    _check(batch, scales, sliding_window=window)
    slopes = torch.tensor([2 ** (-(h + 1)) for h in range(8)], dtype=torch.float32)
    _check(batch, scales, alibi_slopes=slopes)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=_ids)
def test_decode_batch_of_many_lengths(cache_dtype):
    lens = [1, 2, 15, 16, 17, 255, 256, 257, 513, 1025]
    batch, scales = quantized_batch(lens, [1] * len(lens), 12, 4, 128, 16, torch.float32, cache_dtype)
    _check(batch, scales)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=_ids)
def test_written_by_the_op_then_read(cache_dtype):
    """End to end: reshape_and_cache into a NaN-initialised quantized cache, then attention over it, against the
    float64 attention over the unquantized keys (the quantization error itself: int8 < 1%, fp8 a few %)."""
    torch.manual_seed(1)
    T, Hq, Hkv, D, bs = 300, 8, 2, 64, 16
    key, value = torch.randn(T, Hkv, D), torch.randn(T, Hkv, D)
    query = torch.randn(T, Hq, D)
    nb = T // bs + 2
    kc = torch.full((nb, bs, Hkv, D), float("nan")).to(cache_dtype)
    vc = kc.clone()
    ks, vs = ops.new_kv_scales(kc, fp8_scale=4.0 / 448)
    perm = torch.randperm(nb).int()
    block_tables = perm[None, : (T + bs - 1) // bs].contiguous()
    slots = (block_tables[0].long()[torch.arange(T) // bs] * bs + torch.arange(T) % bs).contiguous()
    ops.reshape_and_cache(key, value, kc, vc, slots, k_scales=ks, v_scales=vs)
    seq_lens, cu = torch.tensor([T], dtype=torch.int32), torch.tensor([0, T], dtype=torch.int32)
    out = ops.paged_attention(query, kc, vc, block_tables, seq_lens, cu, D**-0.5, k_scales=ks, v_scales=vs)
    fk = torch.full((nb, bs, Hkv, D), float("nan"))
    fv = fk.clone()
    reference.reshape_and_cache(key, value, fk, fv, slots)
    exact = reference.paged_attention(query, fk, fv, block_tables, seq_lens, cu, D**-0.5)
    rel = ((out.double() - exact).norm() / exact.norm()).item()
    assert rel < (0.01 if cache_dtype == torch.int8 else 0.06), rel


def test_chunked_prefill_equals_one_prefill_int8():
    batch, scales = quantized_batch([200], [200], 4, 2, 64, 16, torch.float32, torch.int8)
    q, kc, vc, bt, sl, cu = batch
    whole = ops.paged_attention(*batch, 0.125, **scales)
    parts = []
    for a, b in ((0, 70), (70, 71), (71, 200)):
        parts.append(
            ops.paged_attention(
                q[a:b],
                kc,
                vc,
                bt,
                torch.tensor([b], dtype=torch.int32),
                torch.tensor([0, b - a], dtype=torch.int32),
                0.125,
                **scales,
            )
        )
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "env",
    [
        {"LMX_NO_BLAS": "1"},
        {"LMX_CPU_ISA": "baseline"},
        {"LMX_CPU_ISA": "avx2"},
        {"LMX_NO_BLAS": "1", "LMX_CPU_ISA": "avx2"},
        {"LMX_CPU_ISA": "avx512"},
    ],
    ids=str,
)
def test_other_code_paths(env):
    """The baseline build (portable loops over dequantized tiles), the AVX2 build without AVX-512 tiles, and the
    fp32 AVX-512 tiles: the same answers for every cache and activation dtype (switches are read once per
    process, hence the subprocess)."""
    code = (
        "import torch, lmx.ops as ops\n"
        "from tests.test_kv_quant import quantized_batch, CACHE_DTYPES\n"
        "from lmx import reference\n"
        f"env = {env!r}; info = ops.build_info(); isa = env.get('LMX_CPU_ISA')\n"
        "allowed = {'baseline': ['baseline'], 'avx2': ['avx2', 'baseline'], 'avx512': ['avx512', 'avx2', 'baseline']}\n"
        "assert isa is None or info['cpu_attention_isa'] in allowed[isa], info\n"
        "torch.manual_seed(0)\n"
        "for cdt in CACHE_DTYPES:\n"
        "    for dtype in (torch.float32, torch.bfloat16, torch.float16):\n"
        "        b, s = quantized_batch([300, 17, 2000], [300, 1, 1], 8, 2, 96, 16, dtype, cdt)\n"
        "        tol = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]\n"
        "        out = ops.paged_attention(*b, 96 ** -0.5, **s)\n"
        "        ref = reference.paged_attention(*b, 96 ** -0.5, **s)\n"
        "        err = (out.double() - ref).abs().max()\n"
        "        assert err < tol, (cdt, dtype, err)\n"
        "        k = torch.randn(40, 2, 96).to(dtype); v = torch.randn(40, 2, 96).to(dtype)\n"
        "        kc = torch.zeros(4, 16, 2, 96, dtype=cdt); vc = kc.clone(); ks, vs = ops.new_kv_scales(kc, 0.05)\n"
        "        r = [t.clone() for t in (kc, vc, ks, vs)]\n"
        "        ops.reshape_and_cache(k, v, kc, vc, torch.arange(40), k_scales=ks, v_scales=vs)\n"
        "        reference.reshape_and_cache(k, v, r[0], r[1], torch.arange(40), r[2], r[3])\n"
        "        bts = lambda t: t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t\n"
        "        assert torch.equal(bts(kc), bts(r[0])) and torch.equal(bts(vc), bts(r[1]))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env=dict(os.environ, **env),
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )


def test_works_under_torch_compile_and_opcheck():
    batch, scales = quantized_batch([20], [20], 4, 2, 64, 16, torch.float32, torch.int8)

    def f(q):
        return ops.paged_attention(q * 1.0, *batch[1:], 0.125, **scales) + 1.0

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(batch[0]), f(batch[0]))
    out = torch.empty_like(batch[0])
    torch.library.opcheck(
        torch.ops.lmx.paged_attention.default,
        (out, *batch, 0.125, None, -1, scales["k_scales"], scales["v_scales"]),
    )
    k, v = torch.randn(5, 2, 64), torch.randn(5, 2, 64)
    for cdt in [torch.int8]:  # opcheck's schema check cannot compare float8 tensors (no fp8 mul on CPU)
        kc = torch.zeros(2, 16, 2, 64, dtype=cdt)
        vc = kc.clone()
        ks, vs = ops.new_kv_scales(kc, 0.1)
        torch.library.opcheck(torch.ops.lmx.reshape_and_cache.default, (k, v, kc, vc, torch.arange(5), ks, vs))


# ---- bad inputs: every error names the argument, what was expected and what came ------------------------------


def _cache_args(cache_dtype, nb=64, bs=16, hkv=3, d=64):
    kc = torch.zeros(nb, bs, hkv, d, dtype=cache_dtype)
    return kc, kc.clone(), *ops.new_kv_scales(kc, 0.1)


def _attn(kc, vc, ks, vs, q_dtype=torch.float32):
    q = torch.randn(1, 6, kc.shape[3], dtype=q_dtype)
    bt = torch.zeros(1, 1, dtype=torch.int32)
    return lambda: ops.paged_attention(
        q,
        kc,
        vc,
        bt,
        torch.tensor([1], dtype=torch.int32),
        torch.tensor([0, 1], dtype=torch.int32),
        0.1,
        k_scales=ks,
        v_scales=vs,
    )


def _write(kc, vc, ks, vs, in_dtype=torch.float32):
    k = torch.randn(2, kc.shape[2], kc.shape[3], dtype=in_dtype)
    return lambda: ops.reshape_and_cache(k, k.clone(), kc, vc, torch.arange(2), k_scales=ks, v_scales=vs)


def _fused(kc, vc, ks, vs):
    hkv, d = kc.shape[2], kc.shape[3]
    q, k = torch.randn(2, 2 * hkv, d), torch.randn(2, hkv, d)
    return lambda: ops.rotary_embedding_and_cache(
        q, k, k.clone(), kc, vc, torch.arange(2), torch.arange(2), RopeConfig(rotary_dim=d), k_scales=ks, v_scales=vs
    )


@pytest.mark.parametrize("make", [_attn, _write, _fused], ids=["paged_attention", "reshape_and_cache", "fused"])
def test_bad_scales_are_named(make):
    op = {_attn: "paged_attention", _write: "reshape_and_cache", _fused: "rotary_embedding_and_cache"}[make]
    kc, vc, ks, vs = _cache_args(torch.int8)
    with pytest.raises(
        ValueError,
        match=rf"lmx\.{op}: k_scales: expected a float32 tensor \[num_blocks, block_size, num_kv_heads, 2\] = "
        r"\[64, 16, 3, 2\] for the int8 k_cache, got None",
    ):
        make(kc, vc, None, vs)()
    with pytest.raises(
        ValueError,
        match=rf"lmx\.{op}: v_scales: expected a float32 tensor .* got a float32 tensor "
        r"of shape \[64, 16, 3\]",
    ):
        make(kc, vc, ks, vs[..., 0].contiguous())()
    with pytest.raises(TypeError, match=rf"lmx\.{op}: k_scales: expected a float32 tensor .* got a float64 tensor"):
        make(kc, vc, ks.double(), vs)()
    with pytest.raises(ValueError, match=rf"lmx\.{op}: k_scales: expected a contiguous tensor"):
        make(kc, vc, ks.transpose(0, 1).contiguous().transpose(0, 1), vs)()
    fk, fv, _, _ = _cache_args(torch.float32)
    with pytest.raises(ValueError, match=rf"lmx\.{op}: k_scales: expected None for the float32 k_cache"):
        make(fk, fv, ks, vs)()
    with pytest.raises(TypeError, match=rf"lmx\.{op}: v_cache: expected the dtype of k_cache \(int8"):
        make(kc, vc.view(torch.uint8).view(torch.float8_e4m3fn), ks, vs)()
    with pytest.raises(TypeError, match=rf"lmx\.{op}: v_cache: expected (the )?dtype"):
        make(fk, kc, None, None)()
    ek, ev, es, evs = _cache_args(torch.float8_e4m3fn)
    with pytest.raises(
        ValueError,
        match=rf"lmx\.{op}: v_scales: expected a float32 tensor \[num_kv_heads\] = \[3\] "
        r"of per-head scales for the float8_e4m3fn k_cache, got a float32 tensor of shape \[64, 16, 3, 2\]",
    ):
        make(ek, ev, es, vs)()
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        s = es.clone()
        s[1] = bad
        with pytest.raises(
            ValueError,
            match=rf"lmx\.{op}: k_scales\[1\]: expected a positive finite per-head fp8 "
            r"scale, got",
        ):
            make(ek, ev, s, evs)()
    with pytest.raises(
        TypeError,
        match=rf"lmx\.{op}: k_cache: expected dtype float32, bfloat16, float16, int8 or "
        r"float8_e4m3fn, got uint8",
    ):
        make(kc.view(torch.uint8), vc.view(torch.uint8), ks, vs)()


def test_scales_must_not_overlap_what_is_written():
    kc, vc, ks, vs = _cache_args(torch.int8)
    with pytest.raises(ValueError, match=r"lmx\.reshape_and_cache: k_scales: expected memory not shared with v_scales"):
        _write(kc, vc, ks, ks)()


def test_quantized_cache_takes_any_activation_dtype():
    for in_dtype in DTYPES:
        for cdt in CACHE_DTYPES:
            kc, vc, ks, vs = _cache_args(cdt, nb=2)
            _write(kc, vc, ks, vs, in_dtype)()
            _attn(kc, vc, ks, vs, in_dtype)()
