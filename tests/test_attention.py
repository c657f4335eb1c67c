"""lmx.ops.paged_attention against a float64 softmax(QKᵀ)V.

Tolerance (FlashAttention's rule): the kernel's error against float64 is at most twice the error of the same
computation done by PyTorch in the kernel's dtype, plus 1e-5. Unused cache slots hold NaN, so a kernel that reads
anything it should not fails.
"""

import os
import subprocess
import sys

import pytest
import torch

from lmx import ops, reference

from .helpers import check_attention, make_paged_batch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEAD_DIMS = [64, 80, 96, 128, 256]
GQA_RATIOS = [1, 4, 8]
BLOCK_SIZES = [1, 16, 256]


def _check(query, k_cache, v_cache, block_tables, seq_lens, cu, **kwargs):
    scale = query.shape[-1] ** -0.5
    out = ops.paged_attention(query, k_cache, v_cache, block_tables, seq_lens, cu, scale, **kwargs)
    check_attention(out, query, k_cache, v_cache, block_tables, seq_lens, cu, scale, **kwargs)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("gqa", GQA_RATIOS)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_mixed_batch(dtype, head_dim, gqa, block_size):
    """One call with a decode, a prefill and a chunked-prefill sequence; lengths cross block boundaries."""
    seq_lens = [block_size + 1, 3 * block_size - 1 if block_size > 1 else 37, 300]
    query_lens = [1, seq_lens[1], 45]  # decode, whole prefill, a chunk at the end of a 300-token sequence
    batch = make_paged_batch(seq_lens, query_lens, 2 * gqa, 2, head_dim, block_size, dtype)
    _check(*batch)


@pytest.mark.parametrize("gqa", GQA_RATIOS)
@pytest.mark.parametrize("window", [1, 16, 100])
def test_sliding_window(gqa, window):
    _check(*make_paged_batch([130, 90], [1, 90], 2 * gqa, 2, 64, 16, torch.float32), sliding_window=window)


@pytest.mark.parametrize("head_dim", [16, 32, 80, 112, 160, 192])
@pytest.mark.parametrize("gqa", [1, 3, 8])
@pytest.mark.parametrize("window", [-1, 200])
def test_prefill_tiles(head_dim, gqa, window):
    """Long prefills and chunks: several key tiles of 256, query tiles whose rows are not whole vectors of 16,
    every channel-block remainder of the AVX-512 tiles (where the CPU has them; the BLAS tiles otherwise)."""
    for dtype in (torch.float32, torch.bfloat16):  # odd key counts in the last tiles (bf16 pairs of keys)
        batch = make_paged_batch([701, 301, 41], [701, 45, 17], 2 * gqa, 2, head_dim, 16, dtype)
        _check(*batch, sliding_window=window)


def test_isa_name_matches_the_cpu():
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    isa = ops.build_info()["cpu_attention_isa"]
    assert isa in ("avx512_bf16", "avx512", "avx2", "baseline")
    if isa.startswith("avx512"):
        assert {"avx512f", "avx512dq", "avx512vl", "avx512bw"} <= set(flags)
    if isa == "avx512_bf16":
        assert "avx512_bf16" in flags


@pytest.mark.parametrize("gqa", GQA_RATIOS)
def test_alibi(gqa):
    slopes = torch.tensor([2 ** (-8 * (h + 1) / (2 * gqa)) for h in range(2 * gqa)], dtype=torch.float32)
    _check(*make_paged_batch([70, 33], [70, 4], 2 * gqa, 2, 64, 16, torch.float32), alibi_slopes=slopes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_decode_uses_splits(dtype):
    """One sequence of 5,000 tokens, decode: few work items, so the key range is split and merged in fp32."""
    _check(*make_paged_batch([5000], [1], 8, 1, 128, 16, dtype))


def test_decode_batch_of_many_lengths():
    seq_lens = [1, 2, 15, 16, 17, 255, 256, 257, 1000, 3]
    _check(*make_paged_batch(seq_lens, [1] * len(seq_lens), 9, 3, 64, 16, torch.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(9, 3), (12, 2), (14, 2), (8, 1)], ids=str)
def test_decode_groups_and_short_chunks(dtype, heads):
    """The AVX-512 decode kernels: kv-head groups of 3, 6 and 7 query heads (runs of four plus a remainder), one and
    a few query tokens per sequence (masked keys inside a tile), long sequences (split key ranges), sliding windows,
    and the same bits on one thread as on two."""
    hq, hkv = heads
    batch = make_paged_batch([3000, 130, 37, 17], [1, 3, 2, 1], hq, hkv, 64, 16, dtype)
    out = _check(*batch)
    _check(*batch, sliding_window=50)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.paged_attention(*batch, 64**-0.5)
        torch.set_num_threads(2)
        two = ops.paged_attention(*batch, 64**-0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two) and torch.equal(one, out)


def test_chunked_prefill_equals_one_prefill():
    """A prompt attended in chunks gives what one prefill gives, row for row."""
    q, kc, vc, bt, _, _ = make_paged_batch([200], [200], 4, 2, 64, 16, torch.float32)
    scale = 64**-0.5
    whole = ops.paged_attention(
        q, kc, vc, bt, torch.tensor([200], dtype=torch.int32), torch.tensor([0, 200], dtype=torch.int32), scale
    )
    for start, end in [(0, 64), (64, 65), (65, 200)]:
        part = ops.paged_attention(
            q[start:end].contiguous(),
            kc,
            vc,
            bt,
            torch.tensor([end], dtype=torch.int32),
            torch.tensor([0, end - start], dtype=torch.int32),
            scale,
        )
        torch.testing.assert_close(part, whole[start:end], atol=2e-6, rtol=1e-5)


def test_sequence_without_queries_is_ignored():
    q, kc, vc, bt, sl, cu = make_paged_batch([40, 50], [0, 3], 4, 2, 64, 16, torch.float32)
    _check(q, kc, vc, bt, sl, cu)


def test_strided_query_and_out():
    q, kc, vc, bt, sl, cu = make_paged_batch([33], [33], 4, 2, 64, 16, torch.float32)
    wide = torch.randn(33, 8, 64)
    wide[:, :4] = q
    out = torch.zeros(33, 8, 64)
    ops.paged_attention(wide[:, :4], kc, vc, bt, sl, cu, 0.125, out=out[:, 2:6])
    expected = reference.paged_attention(q, kc, vc, bt, sl, cu, 0.125)
    torch.testing.assert_close(out[:, 2:6].double(), expected, atol=1e-5, rtol=1e-5)
    assert (out[:, :2] == 0).all() and (out[:, 6:] == 0).all()


@pytest.mark.parametrize(
    "env",
    [
        {"LMX_NO_BLAS": "1"},
        {"LMX_CPU_ISA": "baseline"},
        {"LMX_NO_BLAS": "1", "LMX_CPU_ISA": "baseline"},
        {"LMX_CPU_ISA": "avx2"},
        {"LMX_NO_BLAS": "1", "LMX_CPU_ISA": "avx2"},
        {"LMX_CPU_ISA": "avx512"},
    ],
    ids=str,
)
def test_other_code_paths(env):
    """The portable loops, the baseline-ISA build, the AVX2 build without its AVX-512 tiles (BLAS tiles, or the
    direct kernels without BLAS) and the fp32 AVX-512 tiles for bf16 give the same answers (the switches are read
    once per process, hence the subprocess; the ALiBi call takes the portable tiles, the plain one the others)."""
    code = (
        "import torch, lmx.ops as ops; from tests.helpers import make_paged_batch; from lmx import reference\n"
        f"env = {env!r}; info = ops.build_info()\n"
        "assert info['cpu_blas'] == ('LMX_NO_BLAS' not in env), info\n"
        "isa = env.get('LMX_CPU_ISA')\n"
        "allowed = {'baseline': ['baseline'], 'avx2': ['avx2', 'baseline'], 'avx512': ['avx512', 'avx2', 'baseline']}\n"
        "assert isa is None or info['cpu_attention_isa'] in allowed[isa], info\n"
        "torch.manual_seed(0)\n"
        "slopes = torch.rand(8)\n"
        "for dtype in (torch.float32, torch.bfloat16, torch.float16):\n"
        "    b = make_paged_batch([300, 17, 2000], [300, 1, 1], 8, 2, 96, 16, dtype)\n"
        "    tol = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]\n"
        "    for kw in ({'alibi_slopes': slopes}, {}):\n"
        "        out = ops.paged_attention(*b, 96 ** -0.5, **kw)\n"
        "        ref = reference.paged_attention(*b, 96 ** -0.5, **kw)\n"
        "        assert (out.double() - ref).abs().max() < tol, (dtype, kw, (out.double() - ref).abs().max())\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env=dict(os.environ, **env),
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )


def test_works_under_torch_compile():
    q, kc, vc, bt, sl, cu = make_paged_batch([20], [20], 4, 2, 64, 16, torch.float32)

    def f(q):
        return ops.paged_attention(q * 1.0, kc, vc, bt, sl, cu, 0.125) + 1.0

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q), f(q))
