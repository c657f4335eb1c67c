"""lmx.ops.linear (the CPU GEMV of decode steps) against the float64 reference: dtypes, shapes that are not
multiples of the tiles (N % 4, K % 16 and K % 32), bias, strided rows, and the invariances the engine relies on:
the same bits on one thread or two, and a row's result independent of the other rows of the batch."""

import os
import subprocess
import sys

import pytest
import torch

from lmx import ops, reference

# fp32 sums of K products in another order than float64's: a few ulps of the result's scale.
TOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}
SHAPES = [(1, 960, 576), (1, 4, 16), (2, 7, 33), (3, 5, 31), (5, 1, 1), (4, 17, 48), (9, 100, 70), (1, 3, 1536)]


def _close(out, ref, dtype):
    scale = ref.double().abs().max().clamp_min(1.0)
    err = ((out.double() - ref.double()).abs().max() / scale).item()
    assert err < TOL[dtype], (dtype, tuple(out.shape), err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(dtype, M, N, K, with_bias):
    torch.manual_seed(M * 1000 + N + K)
    x, w = torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype)
    b = torch.randn(N, dtype=dtype) if with_bias else None
    out = ops.linear(x, w, b)
    assert out.dtype == dtype and out.shape == (M, N)
    _close(out, reference.linear(x, w, b), dtype)


def test_strided_rows_and_out_buffer():
    torch.manual_seed(0)
    big = torch.randn(6, 80)
    x = big[::2, 3:67]  # rows 160 floats apart, last dim contiguous
    w, b = torch.randn(12, 64), torch.randn(12)
    out = torch.full((3, 20), float("nan"))[:, 4:16]  # a view with row stride 20
    got = ops.linear(x, w, b, out=out)
    assert got.data_ptr() == out.data_ptr()
    _close(out, reference.linear(x, w, b), torch.float32)


def test_empty_shapes():
    assert ops.linear(torch.randn(0, 8), torch.randn(5, 8)).shape == (0, 5)
    assert ops.linear(torch.randn(3, 8), torch.randn(0, 8)).shape == (3, 0)
    out = ops.linear(torch.randn(2, 0), torch.randn(3, 0), torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 3.0]] * 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_row_independent_of_batch(dtype):
    """Row m of a batch is bitwise the row alone: the sum order depends on K only."""
    torch.manual_seed(1)
    x, w, b = torch.randn(7, 200, dtype=dtype), torch.randn(301, 200, dtype=dtype), torch.randn(301, dtype=dtype)
    batch = ops.linear(x, w, b)
    for m in range(7):
        assert torch.equal(batch[m : m + 1], ops.linear(x[m : m + 1], w, b)), m


def test_same_bits_on_one_thread_or_all():
    torch.manual_seed(2)
    x, w = torch.randn(3, 576), torch.randn(3072, 576)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.linear(x, w)
        torch.set_num_threads(max(n, 2))
        many = ops.linear(x, w)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, many)


def test_nan_and_inf_propagate():
    x = torch.ones(1, 40)
    w = torch.ones(3, 40)
    w[1, 37] = float("nan")
    w[2, 5] = float("inf")
    out = ops.linear(x, w)
    assert out[0, 0] == 40 and out[0, 1].isnan() and out[0, 2] == float("inf")


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (lambda x, w: ops.linear(x.double(), w.double()), TypeError, r"lmx.linear: input: expected dtype float32"),
        (lambda x, w: ops.linear(x, w.half()), TypeError, r"lmx.linear: weight: expected dtype"),
        (lambda x, w: ops.linear(x, torch.randn(3, 9)), ValueError, r"weight: expected in_features \(dim 1\) 8"),
        (lambda x, w: ops.linear(x[:, ::2], torch.randn(3, 4)), ValueError, r"input: expected the last dim"),
        (lambda x, w: ops.linear(x, w.T.contiguous().T), ValueError, r"weight: expected a contiguous tensor"),
        (lambda x, w: ops.linear(x, w, torch.randn(4)), ValueError, r"bias: expected shape \[3\], got \[4\]"),
        (lambda x, w: ops.linear(x[0], w), ValueError, r"input: expected a 2-d tensor \[rows, in_features\]"),
        (lambda x, w: ops.linear(x, w, out=torch.empty(2, 4)), ValueError, r"out: expected shape \[2, 3\]"),
        (
            lambda x, w: ops.linear(x, w, out=x.view(-1)[:6].view(2, 3)),
            ValueError,
            r"out: expected memory that does not overlap input",
        ),
        (lambda x, w: ops.linear(x, w.to("meta")), ValueError, r"weight: expected a tensor on cpu"),
    ],
)
def test_bad_arguments(bad, error, match):
    x, w = torch.randn(2, 8), torch.randn(3, 8)
    with pytest.raises(error, match=match):
        bad(x, w)


def test_opcheck():
    x, w, b = torch.randn(3, 40), torch.randn(10, 40), torch.randn(10)
    torch.library.opcheck(torch.ops.lmx.linear.default, (torch.empty(3, 10), x, w, b))
    torch.library.opcheck(torch.ops.lmx.linear.default, (torch.empty(3, 10), x, w, None))


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_other_code_paths(isa):
    """The portable loops and the AVX2 kernel (chosen once per process, hence the subprocess)."""
    code = (
        "import torch; from lmx import ops, reference\n"
        "torch.manual_seed(0)\n"
        f"tol = {{torch.float32: {TOL[torch.float32]}, torch.bfloat16: {TOL[torch.bfloat16]}, "
        f"torch.float16: {TOL[torch.float16]}}}\n"
        "for dtype in tol:\n"
        f"    for M, N, K in {SHAPES!r}:\n"
        "        x, w, b = torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype), torch.randn(N, dtype=dtype)\n"
        "        out, ref = ops.linear(x, w, b).double(), reference.linear(x, w, b).double()\n"
        "        err = ((out - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()\n"
        "        assert err < tol[dtype], (dtype, M, N, K, err)\n"
        "        assert torch.equal(ops.linear(x[:1], w, b), ops.linear(x, w, b)[:1])\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env=dict(os.environ, LMX_CPU_ISA=isa),
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
