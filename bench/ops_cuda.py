"""CUDA benchmark of the lmx kernels (needs an NVIDIA GPU; refuses to run without one).

  decode        paged_attention, one query per sequence: bytes of K and V read per second, against a plain
                device copy of the same number of bytes (torch.Tensor.copy_, which also writes them)
  decode-int8   the same shapes with int8 and float8_e4m3fn caches (issue 12; bytes counted: the cache and its
  decode-fp8    scales), timed in the same run as the unquantized cache: speedup = unquantized ms / quantized ms
  prefill       paged_attention over whole prompts, against SDPA's flash backend on contiguous [B, H, L, D]
  rope+cache    rotary_embedding_and_cache, against a copy of the bytes it reads and writes

  python bench/ops_cuda.py [--json bench/results/cuda-ops.json] [--dtype bfloat16]
No number from this script has been recorded yet: the project has had no GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch


def timed(fn, warmup=3, iters=20) -> float:
    """Median milliseconds per call, by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_ms(nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return timed(lambda: dst.copy_(src))


def paged(B, L, Hq, Hkv, D, bs, dtype, n_query):
    nb = B * ((L + bs - 1) // bs)
    k_cache = torch.randn(nb, bs, Hkv, D, dtype=dtype, device="cuda")
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(nb, device="cuda").int().view(B, -1)
    seq_lens = torch.full((B,), L, dtype=torch.int32, device="cuda")
    cu = torch.arange(0, B + 1, dtype=torch.int32, device="cuda") * n_query
    q = torch.randn(B * n_query, Hq, D, dtype=dtype, device="cuda")
    return q, k_cache, v_cache, table, seq_lens, cu


def bench_decode(ops, dtype, rows):
    for B, L, Hq, Hkv, D in [
        (1, 32768, 32, 8, 128),
        (16, 4096, 32, 8, 128),
        (64, 2048, 32, 8, 128),
        (8, 131072, 32, 8, 128),
    ]:
        args = paged(B, L, Hq, Hkv, D, 16, dtype, 1)
        ms = timed(lambda args=args, D=D: ops.paged_attention(*args, D**-0.5))
        kv_bytes = 2 * B * L * Hkv * D * args[0].element_size()
        ref = copy_ms(kv_bytes)
        rows.append(
            dict(
                bench="decode",
                shape=f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D}",
                ms=ms,
                baseline="copy",
                baseline_ms=ref,
                gbps=kv_bytes / ms / 1e6,
                copy_gbps=2 * kv_bytes / ref / 1e6,
            )
        )


def quantize(ops, k_cache, v_cache, qdtype):
    """int8 / float8_e4m3fn copies of the caches, written by the op itself (every slot), and their scales."""
    nb, bs, hkv, d = k_cache.shape
    kq, vq = torch.empty_like(k_cache, dtype=qdtype), torch.empty_like(v_cache, dtype=qdtype)
    if qdtype == torch.int8:
        ks = torch.empty(nb, bs, hkv, 2, dtype=torch.float32, device="cuda")
        vs = torch.empty_like(ks)
    else:
        ks = k_cache.float().abs().amax(dim=(0, 1, 3)) / 448.0
        vs = v_cache.float().abs().amax(dim=(0, 1, 3)) / 448.0
    slots = torch.arange(nb * bs, device="cuda")
    ops.reshape_and_cache(k_cache.view(-1, hkv, d), v_cache.view(-1, hkv, d), kq, vq, slots, k_scales=ks, v_scales=vs)
    return kq, vq, ks, vs


def bench_decode_quantized(ops, dtype, rows):
    for B, L, Hq, Hkv, D in [
        (1, 32768, 32, 8, 128),
        (16, 4096, 32, 8, 128),
        (64, 2048, 32, 8, 128),
        (8, 131072, 32, 8, 128),
    ]:
        args = paged(B, L, Hq, Hkv, D, 16, dtype, 1)
        q, k_cache, v_cache, table, seq_lens, cu = args
        base_ms = timed(lambda args=args, D=D: ops.paged_attention(*args, D**-0.5))
        for qdtype, name in [(torch.int8, "decode-int8"), (torch.float8_e4m3fn, "decode-fp8")]:
            kq, vq, ks, vs = quantize(ops, k_cache, v_cache, qdtype)
            qargs = (q, kq, vq, table, seq_lens, cu)
            ms = timed(
                lambda qargs=qargs, ks=ks, vs=vs, D=D: ops.paged_attention(*qargs, D**-0.5, k_scales=ks, v_scales=vs)
            )
            kv_bytes = 2 * B * L * Hkv * D  # one byte per element
            if qdtype == torch.int8:
                kv_bytes += 2 * B * L * Hkv * 8  # (scale, zero) per row
            rows.append(
                dict(
                    bench=name,
                    shape=f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D}",
                    ms=ms,
                    baseline=f"{str(dtype).removeprefix('torch.')} cache",
                    baseline_ms=base_ms,
                    gbps=kv_bytes / ms / 1e6,
                    speedup=base_ms / ms,
                )
            )
            del kq, vq, ks, vs, qargs


def bench_prefill(ops, dtype, rows):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for B, L, H, D in [(1, 4096, 32, 128), (4, 2048, 32, 128), (1, 16384, 32, 128)]:
        args = paged(B, L, H, H, D, 16, dtype, L)
        ms = timed(lambda args=args, D=D: ops.paged_attention(*args, D**-0.5), iters=5)
        q = torch.randn(B, H, L, D, dtype=dtype, device="cuda")
        k, v = torch.randn_like(q), torch.randn_like(q)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ref = timed(
                lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), iters=5
            )
        flops = 2 * 2 * B * H * L * L * D / 2  # causal: half of QK^T and PV
        # The glue's choice (csrc/cuda/launchers.h): tensor cores (wmma) for fp16 / bf16 with head_dim % 16 == 0.
        kernel = "prefill-wmma" if dtype in (torch.float16, torch.bfloat16) and D % 16 == 0 else "prefill-simt"
        rows.append(
            dict(
                bench="prefill",
                kernel=kernel,
                shape=f"B={B} L={L} H={H} D={D}",
                ms=ms,
                baseline="sdpa-flash",
                baseline_ms=ref,
                tflops=flops / ms / 1e9,
                baseline_tflops=flops / ref / 1e9,
            )
        )


def bench_rope_cache(ops, dtype, rows):
    from lmx.rope import RopeConfig

    for T, Hq, Hkv, D in [(1, 32, 8, 128), (4096, 32, 8, 128), (16384, 32, 8, 128)]:
        rope = RopeConfig(rotary_dim=D, scaling_type="dynamic", factor=2.0, max_position_embeddings=4096)
        q = torch.randn(T, Hq, D, dtype=dtype, device="cuda")
        k, v = torch.randn(T, Hkv, D, dtype=dtype, device="cuda"), torch.randn(T, Hkv, D, dtype=dtype, device="cuda")
        bs = 16
        nb = math.ceil(T / bs) + 1
        kc = torch.empty(nb, bs, Hkv, D, dtype=dtype, device="cuda")
        vc = torch.empty_like(kc)
        slots = torch.arange(T, device="cuda")
        pos = torch.arange(T, device="cuda")
        ms = timed(lambda a=(q, k, v, kc, vc, slots, pos, rope): ops.rotary_embedding_and_cache(*a))
        moved = (2 * q.numel() + 2 * k.numel() + v.numel() + 2 * k.numel()) * q.element_size()  # read + write
        ref = copy_ms(moved // 2)
        rows.append(
            dict(
                bench="rope+cache",
                shape=f"T={T} Hq={Hq} Hkv={Hkv} D={D}",
                ms=ms,
                baseline="copy",
                baseline_ms=ref,
                gbps=moved / ms / 1e6,
                copy_gbps=moved / ref / 1e6,
            )
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/ops_cuda.py: no CUDA device (torch.cuda.is_available() is False); nothing measured")
        return 2
    from lmx import ops

    if not ops.build_info()["cuda"]:
        print("bench/ops_cuda.py: lmx._C was built without CUDA kernels (rebuild with LMX_CUDA=1); nothing measured")
        return 2
    dtype = getattr(torch, args.dtype)
    rows: list[dict] = []
    bench_decode(ops, dtype, rows)
    bench_decode_quantized(ops, dtype, rows)
    bench_prefill(ops, dtype, rows)
    bench_rope_cache(ops, dtype, rows)
    print(f"{'bench':11s} {'shape':34s} {'ms':>9s} {'baseline':>14s} {'base ms':>9s}  rate")
    for r in rows:
        if "speedup" in r:
            rate = f"{r['gbps']:.0f} GB/s, {r['speedup']:.2f}x the unquantized cache"
        elif "gbps" in r:
            rate = f"{r['gbps']:.0f} GB/s vs copy {r['copy_gbps']:.0f} GB/s"
        else:
            rate = f"{r['tflops']:.1f} TFLOP/s vs {r['baseline_tflops']:.1f}"

        print(f"{r['bench']:11s} {r['shape']:34s} {r['ms']:9.3f} {r['baseline']:>14s} {r['baseline_ms']:9.3f}  {rate}")
    if args.json:
        meta = dict(
            device=torch.cuda.get_device_name(), torch=torch.__version__, dtype=args.dtype, build=ops.build_info()
        )
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
