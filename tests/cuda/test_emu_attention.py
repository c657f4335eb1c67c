"""Emulated CUDA paged attention (decode kernel with split-K, CUDA-core prefill kernel, tensor-core (wmma) prefill
kernel) against a float64 softmax(QKᵀ)V.

Tolerance as in tests/test_attention.py (FlashAttention's rule): the kernel's error against float64 is at most
twice the error of the same computation done by PyTorch in the kernel's dtype, plus a floor. Unused cache slots
hold NaN, so a kernel that reads anything it should not fails.
"""

import pytest
import torch

from lmx import reference

from ..helpers import check_attention, make_paged_batch
from . import emu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HEAD_DIMS = [16, 32, 64, 80, 96, 112, 128, 160, 192, 256]
GQA_RATIOS = [1, 4, 8]
BLOCK_SIZES = [1, 16, 256]
KERNELS = ["decode", "prefill-simt", "prefill-wmma"]
WMMA_DTYPES = [torch.bfloat16, torch.float16]


def _dtype(kernel, i=0):
    """fp32 for the CUDA-core kernels; the tensor-core kernel takes 16-bit inputs only."""
    return WMMA_DTYPES[i % 2] if kernel == "prefill-wmma" else torch.float32


@pytest.fixture(autouse=True, scope="module")
def _module():
    emu.module()


def _check(query, k_cache, v_cache, block_tables, seq_lens, cu, kernel="auto", partition_size=0, **kwargs):
    scale = query.shape[-1] ** -0.5
    out = emu.paged_attention(
        query,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        cu,
        scale,
        kernel=kernel,
        partition_size=partition_size,
        **kwargs,
    )
    ran = emu.module().last_attention_kernel()
    if kernel in ("decode", "prefill-simt", "prefill-wmma"):
        assert ran == kernel
    check_attention(out, query, k_cache, v_cache, block_tables, seq_lens, cu, scale, label=f"{kernel}: ", **kwargs)
    return out


# Covered, not crossed (emu.cover): every dtype x head dim, every dtype x GQA ratio x block size, every head dim x
# block size, and every schedule with every dtype, GQA ratio and block size.
GRID_AXES = dict(dtype=DTYPES, head_dim=HEAD_DIMS, gqa=GQA_RATIOS, block_size=BLOCK_SIZES, sched=emu.SCHEDULES)
GRID_GROUPS = [
    ("dtype", "head_dim"),
    ("dtype", "gqa", "block_size"),
    ("head_dim", "block_size"),
    ("sched", "dtype"),
    ("sched", "gqa"),
    ("sched", "block_size"),
]
GRID = emu.cover(GRID_AXES, GRID_GROUPS)
# The prefill grid adds the kernel: "prefill" is the glue's choice (tensor cores for fp16 / bf16, every head dim the
# op takes being a multiple of 16), "prefill-simt" the CUDA-core kernel for every dtype.
PREFILL_GRID = emu.cover(
    dict(GRID_AXES, kernel=["prefill", "prefill-simt"]),
    GRID_GROUPS
    + [("kernel", "dtype"), ("kernel", "head_dim"), ("kernel", "gqa"), ("kernel", "block_size"), ("kernel", "sched")],
)


@pytest.mark.parametrize("dtype,head_dim,gqa,block_size,sched,kernel", PREFILL_GRID, ids=emu.ids(PREFILL_GRID))
def test_mixed_batch(dtype, head_dim, gqa, block_size, sched, kernel):
    """A decode, a whole prefill and a chunk at the end of a 300-token sequence in one call (a prefill kernel);
    lengths cross block boundaries."""
    seq_lens = [block_size + 1, 2 * block_size + 3 if block_size > 1 else 37, 300]
    query_lens = [1, seq_lens[1], 45]
    batch = make_paged_batch(seq_lens, query_lens, 2 * gqa, 2, head_dim, block_size, dtype)
    with emu.schedule(*sched):
        _check(*batch, kernel=kernel)
    expected = "prefill-wmma" if kernel == "prefill" and dtype != torch.float32 else "prefill-simt"
    assert emu.module().last_attention_kernel() == expected


@pytest.mark.parametrize("dtype,head_dim,gqa,block_size,sched", GRID, ids=emu.ids(GRID))
def test_decode_batch(dtype, head_dim, gqa, block_size, sched):
    """One query per sequence (the decode kernel); 128-key partitions, so the longer sequences are split and merged."""
    seq_lens = [1, block_size + 1, 3 * block_size - 1 if block_size > 1 else 37, 300]
    batch = make_paged_batch(seq_lens, [1] * len(seq_lens), 2 * gqa, 2, head_dim, block_size, dtype)
    with emu.schedule(*sched):
        _check(*batch, partition_size=128)


@pytest.mark.parametrize("sched", emu.SCHEDULES, ids=emu.SCHEDULE_IDS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("gqa", GQA_RATIOS)
def test_both_kernels_under_every_schedule(sched, kernel, gqa):
    """128-key partitions: two decode tiles per block and a split, so a missing barrier between tiles shows."""
    batch = make_paged_batch([17, 70, 150], [1, 70, 20], 2 * gqa, 2, 80, 16, _dtype(kernel, gqa))
    with emu.schedule(*sched):
        _check(*batch, kernel=kernel, partition_size=128)


WINDOW_CASES = emu.cover(
    dict(kernel=KERNELS, window=[1, 16, 100], gqa=GQA_RATIOS, sched=emu.SCHEDULES[:3]),
    [("kernel", "window"), ("kernel", "gqa"), ("kernel", "sched"), ("window", "gqa")],
)


@pytest.mark.parametrize("kernel,window,gqa,sched", WINDOW_CASES, ids=emu.ids(WINDOW_CASES))
def test_sliding_window(kernel, window, gqa, sched):
    with emu.schedule(*sched):
        _check(
            *make_paged_batch([130, 90], [1, 90], 2 * gqa, 2, 64, 16, _dtype(kernel, window)),
            kernel=kernel,
            partition_size=64,
            sliding_window=window,
        )


ALIBI_CASES = emu.cover(dict(kernel=KERNELS, gqa=GQA_RATIOS, sched=emu.SCHEDULES[:3]))


@pytest.mark.parametrize("kernel,gqa,sched", ALIBI_CASES, ids=emu.ids(ALIBI_CASES))
def test_alibi(kernel, gqa, sched):
    slopes = torch.tensor([2 ** (-8 * (h + 1) / (2 * gqa)) for h in range(2 * gqa)], dtype=torch.float32)
    with emu.schedule(*sched):
        _check(
            *make_paged_batch([70, 33], [70, 4], 2 * gqa, 2, 64, 16, _dtype(kernel, gqa)),
            kernel=kernel,
            partition_size=64,
            alibi_slopes=slopes,
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("partition_size", [0, 64, 320])
def test_long_decode_uses_splits(dtype, partition_size):
    """5,000 keys: 10 default partitions (512), or 79 / 16 small ones, merged in fp32."""
    _check(*make_paged_batch([5000], [1], 8, 1, 128, 16, dtype), partition_size=partition_size)


@pytest.mark.parametrize("heads", [(9, 3), (12, 1), (6, 6), (14, 2)])
def test_decode_batch_of_many_lengths(heads):
    """Groups of 3, 12, 1 and 7 query heads per KV head: partial head chunks of the decode blocks."""
    seq_lens = [1, 2, 15, 16, 17, 255, 256, 257, 1000, 3]
    _check(*make_paged_batch(seq_lens, [1] * len(seq_lens), *heads, 64, 16, torch.float32), partition_size=256)


@pytest.mark.parametrize("kernel", KERNELS)
def test_chunked_prefill_equals_one_prefill(kernel):
    """Each row's result does not depend on which rows share its block: chunks equal the whole prefill (bit for bit
    on tensor cores, whose key tiles start at the same keys for every row)."""
    q, kc, vc, bt, _, _ = make_paged_batch([200], [200], 4, 2, 64, 16, _dtype(kernel))
    scale = 64**-0.5
    whole = emu.paged_attention(
        q,
        kc,
        vc,
        bt,
        torch.tensor([200], dtype=torch.int32),
        torch.tensor([0, 200], dtype=torch.int32),
        scale,
        kernel=kernel,
    )
    for start, end in [(0, 64), (64, 65), (65, 200)]:
        part = emu.paged_attention(
            q[start:end].contiguous(),
            kc,
            vc,
            bt,
            torch.tensor([end], dtype=torch.int32),
            torch.tensor([0, end - start], dtype=torch.int32),
            scale,
            kernel=kernel,
        )
        if kernel == "prefill-wmma":
            assert torch.equal(part, whole[start:end])
        else:
            torch.testing.assert_close(part, whole[start:end], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_sequence_without_queries_is_ignored(kernel):
    _check(*make_paged_batch([40, 50, 20], [0, 3, 0], 4, 2, 64, 16, _dtype(kernel)), kernel=kernel)


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_query_and_out(kernel):
    dtype = _dtype(kernel)
    q, kc, vc, bt, sl, cu = make_paged_batch([33], [33], 4, 2, 64, 16, dtype)
    wide = torch.randn(33, 8, 64).to(dtype)
    wide[:, :4] = q
    out = torch.zeros(33, 8, 64, dtype=dtype)
    emu.paged_attention(wide[:, :4], kc, vc, bt, sl, cu, 0.125, out=out[:, 2:6], kernel=kernel)
    expected = reference.paged_attention(q, kc, vc, bt, sl, cu, 0.125)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out[:, 2:6].double(), expected, atol=tol, rtol=tol)
    assert (out[:, :2] == 0).all() and (out[:, 6:] == 0).all()


def test_auto_picks_decode_for_one_query_per_sequence():
    """The auto choice and the forced kernels agree, bit for bit where auto picked the same kernel."""
    batch = make_paged_batch([300, 40], [1, 1], 8, 2, 64, 16, torch.float32)
    scale = 0.125
    auto = emu.paged_attention(*batch, scale)
    decode = emu.paged_attention(*batch, scale, kernel="decode")
    assert torch.equal(auto, decode)


@pytest.mark.parametrize("kernel", ["prefill-simt", "prefill-wmma"])
def test_large_head_dim_prefill_needs_opt_in_shared_memory(kernel):
    """head_dim 256: the prefill kernels' tiles exceed 48 KiB of shared memory (145 KiB on tensor cores); the
    launcher raises the limit (the emulator refuses a launch over 48 KiB without cudaFuncSetAttribute, as the GPU
    does, and over 163 KiB, sm_80's limit)."""
    _check(*make_paged_batch([40], [40], 2, 1, 256, 16, _dtype(kernel)), kernel=kernel)


# The tensor-core prefill kernel over the prefill grid: fp16 / bf16, GQA 1/4/8, head dims 64/80/128/256, block
# sizes 1/16/256, plain / ALiBi / sliding window, under every schedule; chunks at the end of long sequences, a whole
# prompt and a one-query sequence in one batch; NaN in every unused cache slot.
WMMA_GRID = emu.cover(
    dict(
        dtype=WMMA_DTYPES,
        head_dim=[64, 80, 128, 256],
        gqa=GQA_RATIOS,
        block_size=BLOCK_SIZES,
        bias=["none", "alibi", "window"],
        sched=emu.SCHEDULES,
    ),
    [
        ("dtype", "head_dim"),
        ("dtype", "gqa", "block_size"),
        ("head_dim", "block_size"),
        ("bias", "dtype", "gqa"),
        ("head_dim", "bias"),
        ("sched", "dtype"),
        ("sched", "gqa"),
        ("sched", "bias"),
    ],
)


@pytest.mark.parametrize("dtype,head_dim,gqa,block_size,bias,sched", WMMA_GRID, ids=emu.ids(WMMA_GRID))
def test_prefill_wmma(dtype, head_dim, gqa, block_size, bias, sched):
    seq_lens = [300, 2 * block_size + 3 if block_size > 1 else 37, 20]
    query_lens = [70, seq_lens[1], 1]
    batch = make_paged_batch(seq_lens, query_lens, 2 * gqa, 2, head_dim, block_size, dtype)
    kw = {}
    if bias == "alibi":
        kw["alibi_slopes"] = torch.tensor([2 ** (-8 * (h + 1) / (2 * gqa)) for h in range(2 * gqa)])
    elif bias == "window":
        kw["sliding_window"] = 50
    with emu.schedule(*sched):
        _check(*batch, **kw)  # the glue's own choice
    assert emu.module().last_attention_kernel() == "prefill-wmma"


def test_prefill_kernel_choice():
    """Tensor cores for fp16 / bf16 with head_dim % 16 == 0; the CUDA-core kernel for fp32 and for other head dims
    (none of which the op takes today: every head dim it accepts is a multiple of 16; the C++ harness runs head_dim
    72 through the fallback)."""
    m = emu.module()
    assert [m.prefill_kernel_for(True, d) for d in (16, 64, 80, 256)] == ["prefill-wmma"] * 4
    assert [m.prefill_kernel_for(True, d) for d in (8, 40, 72, 264)] == ["prefill-simt"] * 4
    assert m.prefill_kernel_for(False, 64) == "prefill-simt"
    q, kc, vc, bt, sl, cu = make_paged_batch([20], [20], 2, 1, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="lmx.paged_attention: kernel: the tensor-core prefill kernel takes"):
        emu.paged_attention(q, kc, vc, bt, sl, cu, 0.125, kernel="prefill-wmma")


def test_bad_arguments_raise_the_ops_errors():
    q, kc, vc, bt, sl, cu = make_paged_batch([10], [10], 4, 2, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="lmx.paged_attention: seq_lens"):
        emu.paged_attention(q, kc, vc, bt, torch.tensor([1000], dtype=torch.int32), cu, 0.1)
    with pytest.raises(ValueError, match="kernel"):
        emu.paged_attention(q, kc, vc, bt, sl, cu, 0.1, kernel="tensor-core")
