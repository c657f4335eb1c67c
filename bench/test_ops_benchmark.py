"""pytest-benchmark view of the CPU ops: `pytest bench/test_ops_benchmark.py --benchmark-json out.json`.

The ratio table with SDPA and copy bandwidth (what the README quotes) comes from bench/ops_cpu.py, which alternates
the contenders round by round in one process.
"""

import pytest
import torch
import torch.nn.functional as F

from lmx import ops
from lmx.rope import RopeConfig

SHAPES = [(9, 3, 64), (32, 8, 128)]  # the embedded SmolLM2's heads, and a Llama-8B-like layout
DTYPES = [torch.bfloat16, torch.float32]


def _paged(L, hkv, d, dtype, block_size=16):
    nb = (L + block_size - 1) // block_size
    return torch.randn(nb, block_size, hkv, d, dtype=dtype), torch.randn(nb, block_size, hkv, d, dtype=dtype)


@pytest.mark.parametrize("impl", ["lmx", "sdpa"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,length", [("prefill", 2048), ("decode", 16384)])
def test_attention(benchmark, impl, shape, dtype, kind, length):
    hq, hkv, d = shape
    nq = length if kind == "prefill" else 1
    q = torch.randn(nq, hq, d, dtype=dtype)
    k_cache, v_cache = _paged(length, hkv, d, dtype)
    if impl == "lmx":
        bt = torch.arange(k_cache.shape[0], dtype=torch.int32)[None]
        sl, cu = torch.tensor([length], dtype=torch.int32), torch.tensor([0, nq], dtype=torch.int32)
        fn = lambda: ops.paged_attention(q, k_cache, v_cache, bt, sl, cu, d**-0.5)  # noqa: E731
    else:
        k = k_cache.flatten(0, 1)[:length].transpose(0, 1)[None]
        v = v_cache.flatten(0, 1)[:length].transpose(0, 1)[None]
        qs = q.transpose(0, 1)[None]
        fn = lambda: F.scaled_dot_product_attention(qs, k, v, is_causal=kind == "prefill", enable_gqa=True)  # noqa
    benchmark.extra_info.update(kind=kind, length=length, heads=f"{hq}/{hkv}/{d}", dtype=str(dtype))
    benchmark.pedantic(fn, rounds=3 if kind == "prefill" else 20, warmup_rounds=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fused", [False, True])
def test_rotary(benchmark, dtype, fused):
    T, hq, hkv, d = 4096, 32, 8, 128
    rope = RopeConfig(rotary_dim=d, base=500000.0, scaling_type="dynamic", factor=2.0, max_position_embeddings=8192)
    q, k, v = (torch.randn(T, h, d, dtype=dtype) for h in (hq, hkv, hkv))
    positions = torch.arange(T)
    if fused:
        kc, vc = torch.empty(T // 16, 16, hkv, d, dtype=dtype), torch.empty(T // 16, 16, hkv, d, dtype=dtype)
        fn = lambda: ops.rotary_embedding_and_cache(q, k, v, kc, vc, positions, positions, rope)  # noqa: E731
    else:
        fn = lambda: ops.rotary_embedding(q, k, positions, rope)  # noqa: E731
    benchmark.pedantic(fn, rounds=10, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["lmx", "F.linear"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", [(3072, 576), (49152, 576)], ids=["gate_up", "lm_head"])
def test_decode_linear(benchmark, impl, dtype, n, k):
    x, w = torch.randn(1, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    fn = (lambda: ops.linear(x, w)) if impl == "lmx" else (lambda: F.linear(x, w))  # noqa: E731
    benchmark(fn)
