"""CPU microbenchmarks of lmx's ops, side by side with PyTorch in one process.

Paged attention runs against ``torch.nn.functional.scaled_dot_product_attention`` on the same shapes (SDPA gets
contiguous [1, H, L, D] tensors, lmx a paged cache with block size 16). The two alternate round by round, so a
machine whose speed drifts affects both alike; each figure is the median of the rounds and the ratio is
SDPA time / lmx time (> 1: lmx is faster). RoPE and the cache write are compared with the bandwidth of a plain
``Tensor.copy_`` of the same bytes.

    python bench/ops_cpu.py                    # the default grid (a few minutes on 2 cores)
    python bench/ops_cpu.py --full             # adds 16k prefill at 32/8/128 (slow)
    python bench/ops_cpu.py --json out.json
    python bench/ops_cpu.py --full --dtypes float32 --prefill-only --rounds 3   # the fp32 prefill grid
    python bench/ops_cpu.py --kv-quant --rounds 7 --json bench/results/cpu-kv-quant.json   # int8 / fp8 caches

``--kv-quant`` times decode over a 16k cache with fp32, bf16, int8 and fp8 caches (fp32 queries, bf16 ones for
the bf16 cache), alternating round by round in one process, and the fused rotary + cache write into each; the
ratios are against the fp32 cache. KV bytes count what the kernel reads: K and V rows plus int8's (scale, zero).

``--linear`` times the decode GEMVs of SmolLM2-135M (one row; qkv, o, gate_up, down, the LM head) with
``lmx.ops.linear`` against ``F.linear`` and, in fp32, oneDNN's ``torch.ops.mkldnn._linear_pointwise``, with
``Tensor.sum()`` of the same weights as the bandwidth to compare with. Each case cycles through enough copies of
its weights (at least 128 MB) that no call finds them in the caches:

    python bench/ops_cpu.py --linear --rounds 5 --json bench/results/cpu-linear.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lmx import ops
from lmx.rope import RopeConfig

BLOCK_SIZE = 16


@dataclass
class Case:
    kind: str  # "prefill" | "decode"
    length: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str


def default_cases(full: bool, dtypes=("bfloat16", "float32")) -> list[Case]:
    cases = []
    for dtype in dtypes:
        for hq, hkv, d in ((9, 3, 64), (32, 8, 128)):
            cases.append(Case("prefill", 4096, hq, hkv, d, dtype))
            if full or (hq, hkv, d) == (9, 3, 64):
                cases.append(Case("prefill", 16384, hq, hkv, d, dtype))
            cases.append(Case("decode", 16384, hq, hkv, d, dtype))
    return cases


def _paged(x: torch.Tensor) -> torch.Tensor:
    """[L, H, D] -> [num_blocks, BLOCK_SIZE, H, D] (blocks in order; the tail of the last block is zero)."""
    L, H, D = x.shape
    nb = (L + BLOCK_SIZE - 1) // BLOCK_SIZE
    cache = torch.zeros(nb * BLOCK_SIZE, H, D, dtype=x.dtype)
    cache[:L] = x
    return cache.view(nb, BLOCK_SIZE, H, D)


def _time(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_attention(case: Case, rounds: int) -> dict:
    dtype = getattr(torch, case.dtype)
    L, hq, hkv, d = case.length, case.num_q_heads, case.num_kv_heads, case.head_dim
    nq = L if case.kind == "prefill" else 1
    k = torch.randn(L, hkv, d, dtype=dtype)
    v = torch.randn(L, hkv, d, dtype=dtype)
    q = torch.randn(nq, hq, d, dtype=dtype)
    k_cache, v_cache = _paged(k), _paged(v)
    block_tables = torch.arange(k_cache.shape[0], dtype=torch.int32)[None]
    seq_lens = torch.tensor([L], dtype=torch.int32)
    cu = torch.tensor([0, nq], dtype=torch.int32)
    out = torch.empty_like(q)
    qs, ks, vs = (x.transpose(0, 1).unsqueeze(0).contiguous() for x in (q, k, v))  # SDPA: contiguous [1, H, L, D]
    scale = d**-0.5

    def run_lmx():
        ops.paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu, scale, out=out)

    def run_sdpa():
        F.scaled_dot_product_attention(qs, ks, vs, is_causal=case.kind == "prefill", scale=scale, enable_gqa=True)

    run_lmx(), run_sdpa()  # warm up
    inner = 20 if case.kind == "decode" else 1  # decode calls are short: time batches of 20
    t_lmx, t_sdpa = [], []
    for _ in range(rounds):
        t_lmx += [t / inner for t in _time(lambda: [run_lmx() for _ in range(inner)], 1)]
        t_sdpa += [t / inner for t in _time(lambda: [run_sdpa() for _ in range(inner)], 1)]
    lmx_s, sdpa_s = statistics.median(t_lmx), statistics.median(t_sdpa)
    if case.kind == "prefill":
        flops = 4.0 * hq * d * L * (L + 1) / 2  # causal: QKᵀ and PV over the lower triangle
        metric = {"lmx_gflops": flops / lmx_s / 1e9, "sdpa_gflops": flops / sdpa_s / 1e9}
    else:
        kv_bytes = 2 * L * hkv * d * k.element_size()
        metric = {"lmx_gbps": kv_bytes / lmx_s / 1e9, "sdpa_gbps": kv_bytes / sdpa_s / 1e9}
    return {
        **asdict(case),
        "op": "paged_attention",
        "lmx_ms": lmx_s * 1e3,
        "sdpa_ms": sdpa_s * 1e3,
        "speedup_vs_sdpa": sdpa_s / lmx_s,
        **metric,
        "rounds": rounds,
    }


def bench_rope_and_cache(num_tokens: int, dtype_name: str, rounds: int) -> list[dict]:
    """RoPE (q and k in place) and the fused rope + cache write, against a copy of the same bytes."""
    dtype = getattr(torch, dtype_name)
    hq, hkv, d = 32, 8, 128
    rope = RopeConfig(rotary_dim=d, base=500000.0, scaling_type="dynamic", factor=2.0, max_position_embeddings=8192)
    q = torch.randn(num_tokens, hq, d, dtype=dtype)
    k = torch.randn(num_tokens, hkv, d, dtype=dtype)
    v = torch.randn_like(k)
    positions = torch.arange(num_tokens)
    k_cache = torch.empty(num_tokens // BLOCK_SIZE, BLOCK_SIZE, hkv, d, dtype=dtype)
    v_cache = torch.empty_like(k_cache)
    slots = torch.arange(num_tokens)
    src = torch.cat([q.flatten(), k.flatten()])
    dst = torch.empty_like(src)
    results = []
    cases = {
        "rotary_embedding": (lambda: ops.rotary_embedding(q, k, positions, rope), (q.numel() + k.numel()) * 2),
        "rotary_embedding_and_cache": (
            lambda: ops.rotary_embedding_and_cache(q, k, v, k_cache, v_cache, slots, positions, rope),
            (q.numel() + k.numel()) * 2 + 3 * k.numel(),
        ),
    }
    for name, (fn, elements_moved) in cases.items():
        fn(), dst.copy_(src)
        t_op, t_copy = [], []
        for _ in range(rounds):
            t_op += _time(fn, 1)
            t_copy += _time(lambda: dst.copy_(src), 1)
        op_s, copy_s = statistics.median(t_op), statistics.median(t_copy)
        bytes_moved = elements_moved * q.element_size()
        copy_bw = 2 * src.numel() * src.element_size() / copy_s  # a copy reads and writes
        results.append(
            {
                "op": name,
                "tokens": num_tokens,
                "dtype": dtype_name,
                "heads": f"{hq}/{hkv}/{d}",
                "op_ms": op_s * 1e3,
                "op_gbps": bytes_moved / op_s / 1e9,
                "copy_gbps": copy_bw / 1e9,
                "fraction_of_copy": (bytes_moved / op_s) / copy_bw,
                "rounds": rounds,
            }
        )
    return results


KV_QUANT_DTYPES = ("float32", "bfloat16", "int8", "float8_e4m3fn")


def _quant_caches(k_cache: torch.Tensor, v_cache: torch.Tensor, name: str):
    """The fp32 caches as ``name`` caches plus their scales (lmx.reference's quantization; fp8 scale 1.0)."""
    from lmx import reference

    if name in ("float32", "bfloat16"):
        dt = getattr(torch, name)
        return k_cache.to(dt), v_cache.to(dt), {}
    if name == "int8":
        (kq, ks), (vq, vs) = reference.quantize_int8(k_cache), reference.quantize_int8(v_cache)
        return kq, vq, {"k_scales": ks, "v_scales": vs}
    s = torch.ones(k_cache.shape[2])
    return (
        reference.quantize_fp8(k_cache, s),
        reference.quantize_fp8(v_cache, s),
        {"k_scales": s, "v_scales": s.clone()},
    )


def bench_kv_quant_decode(hq: int, hkv: int, d: int, length: int, rounds: int) -> list[dict]:
    """One decode query over a ``length``-token cache in each cache dtype, alternating round by round."""
    k = _paged(torch.randn(length, hkv, d))
    v = _paged(torch.randn(length, hkv, d))
    block_tables = torch.arange(k.shape[0], dtype=torch.int32)[None]
    seq_lens = torch.tensor([length], dtype=torch.int32)
    cu = torch.tensor([0, 1], dtype=torch.int32)
    q32 = torch.randn(1, hq, d)
    runs = {}
    for name in KV_QUANT_DTYPES:
        kc, vc, scales = _quant_caches(k, v, name)
        q = q32.to(torch.bfloat16) if name == "bfloat16" else q32
        out = torch.empty_like(q)
        bytes_read = 2 * length * hkv * d * kc.element_size() + (2 * length * hkv * 8 if name == "int8" else 0)

        def run(q=q, kc=kc, vc=vc, scales=scales, out=out):
            ops.paged_attention(q, kc, vc, block_tables, seq_lens, cu, d**-0.5, out=out, **scales)

        run()
        runs[name] = (run, bytes_read)
    inner = 20
    # Wall time; with one thread also the thread's CPU time, which a machine shared with other jobs disturbs
    # much less (what the kernel itself costs).
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (run, _) in runs.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(inner):
                run()
            times[name].append((time.perf_counter() - t0) / inner)
            cpu[name].append((time.thread_time() - c0) / inner)
    single = torch.get_num_threads() == 1
    base = statistics.median(times["float32"])
    base_cpu = statistics.median(cpu["float32"])
    out = []
    for name, (_, bytes_read) in runs.items():
        t = statistics.median(times[name])
        r = {
            "op": "paged_attention decode", "length": length, "heads": f"{hq}/{hkv}/{d}", "kv_cache_dtype": name,
            "threads": torch.get_num_threads(), "ms": t * 1e3, "kv_bytes": bytes_read, "kv_gbps": bytes_read / t / 1e9,
            "speedup_vs_fp32_cache": base / t, "rounds": rounds, "times_ms": [x * 1e3 for x in times[name]],
        }  # fmt: skip
        if single:
            c = statistics.median(cpu[name])
            r.update(cpu_ms=c * 1e3, kv_gbps_cpu=bytes_read / c / 1e9, cpu_speedup_vs_fp32_cache=base_cpu / c)
        out.append(r)
    return out


def bench_kv_quant_write(num_tokens: int, rounds: int) -> list[dict]:
    """The fused rotary + cache write of fp32 activations into each cache dtype (32/8/128 heads)."""
    hq, hkv, d = 32, 8, 128
    rope = RopeConfig(rotary_dim=d, base=500000.0, scaling_type="dynamic", factor=2.0, max_position_embeddings=8192)
    q0, k0, v = torch.randn(num_tokens, hq, d), torch.randn(num_tokens, hkv, d), torch.randn(num_tokens, hkv, d)
    positions, slots = torch.arange(num_tokens), torch.arange(num_tokens)
    fk = torch.zeros(num_tokens // BLOCK_SIZE, BLOCK_SIZE, hkv, d)
    runs = {}
    for name in ("float32", "int8", "float8_e4m3fn"):
        kc, vc, scales = _quant_caches(fk, fk.clone(), name)
        q, k = q0.clone(), k0.clone()

        def run(q=q, k=k, kc=kc, vc=vc, scales=scales):
            ops.rotary_embedding_and_cache(q, k, v, kc, vc, slots, positions, rope, **scales)

        run()
        runs[name] = run
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name] += _time(run, 1)
    base = statistics.median(times["float32"])
    return [
        {"op": "rotary_embedding_and_cache", "tokens": num_tokens, "heads": f"{hq}/{hkv}/{d}", "kv_cache_dtype": n,
         "ms": statistics.median(t) * 1e3, "time_vs_fp32_cache": statistics.median(t) / base, "rounds": rounds}
        for n, t in times.items()
    ]  # fmt: skip


LINEAR_SHAPES = (("qkv", 960, 576), ("o_proj", 576, 576), ("gate_up", 3072, 576), ("down", 576, 1536),
                 ("lm_head", 49152, 576))  # fmt: skip


def bench_linear(name: str, n: int, k: int, dtype: torch.dtype, rounds: int) -> dict:
    """One-row GEMVs over copies of an [n, k] weight, each way alternating round by round."""
    copies = max(2, -(-(128 << 20) // (n * k * torch.empty(0, dtype=dtype).element_size())))
    weights = [torch.randn(n, k).to(dtype) for _ in range(copies)]
    x, out = torch.randn(1, k).to(dtype), torch.empty(1, n, dtype=dtype)
    ways = {"lmx": lambda w: ops.linear(x, w, out=out), "F.linear": lambda w: F.linear(x, w), "sum": lambda w: w.sum()}
    if dtype == torch.float32:
        ways["onednn"] = lambda w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    for fn in ways.values():
        fn(weights[0])
    times = {way: [] for way in ways}
    for _ in range(rounds):
        for way, fn in ways.items():
            t0 = time.perf_counter()
            for w in weights:
                fn(w)
            times[way].append((time.perf_counter() - t0) / copies)
    nbytes = weights[0].numel() * weights[0].element_size()
    med = {way: statistics.median(t) for way, t in times.items()}
    return {
        "op": "linear", "layer": name, "shape": [n, k], "rows": 1, "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "weight_bytes": nbytes, "rounds": rounds,
        "us": {way: t * 1e6 for way, t in med.items()}, "gbps": {way: nbytes / t / 1e9 for way, t in med.items()},
        "lmx_speedup": {way: t / med["lmx"] for way, t in med.items() if way not in ("lmx", "sum")},
    }  # fmt: skip


def main_linear(args, info) -> None:
    results = []
    print(f"{'decode GEMV':<12}{'shape':>12}{'dtype':>10}{'lmx GB/s':>10}{'F.linear':>10}{'oneDNN':>9}{'sum()':>8}"
          f"{'lmx / F.linear':>16}{'lmx / oneDNN':>14}")  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        for name, n, k in LINEAR_SHAPES:
            r = bench_linear(name, n, k, dtype, args.rounds)
            results.append(r)
            g, x = r["gbps"], r["lmx_speedup"]
            onednn = f"{g['onednn']:>9.1f}" if "onednn" in g else f"{'-':>9}"
            vs_onednn = f"{x['onednn']:>13.2f}x" if "onednn" in x else f"{'-':>14}"
            print(f"{name:<12}{f'{n}x{k}':>12}{r['dtype']:>10}{g['lmx']:>10.1f}{g['F.linear']:>10.1f}{onednn}"
                  f"{g['sum']:>8.1f}{x['F.linear']:>15.2f}x{vs_onednn}", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "command": "python bench/ops_cpu.py " + " ".join(sys.argv[1:]),
                       "linear": results}, f, indent=1)  # fmt: skip
        print(f"\nwrote {args.json}")


def main_kv_quant(args, info) -> None:
    decode, write = [], []
    print(f"{'decode 16k':<14}{'heads':>10}{'cache':>15}{'ms':>9}{'KV GB/s':>10}{'vs fp32 cache':>15}"
          f"{'  (1 thread: CPU ms, GB/s, vs fp32)' if torch.get_num_threads() == 1 else ''}")  # fmt: skip
    for hq, hkv, d in ((9, 3, 64), (32, 8, 128)):
        for r in bench_kv_quant_decode(hq, hkv, d, 16384, args.rounds):
            decode.append(r)
            extra = ""
            if "cpu_ms" in r:
                extra = f"   {r['cpu_ms']:7.3f} {r['kv_gbps_cpu']:6.1f} {r['cpu_speedup_vs_fp32_cache']:6.2f}x"
            print(f"{'':<14}{r['heads']:>10}{r['kv_cache_dtype']:>15}{r['ms']:>9.3f}{r['kv_gbps']:>10.1f}"
                  f"{r['speedup_vs_fp32_cache']:>14.2f}x{extra}", flush=True)  # fmt: skip
    print()
    for r in bench_kv_quant_write(4096, args.rounds):
        write.append(r)
        print(f"rotary_embedding_and_cache 4096 tok {r['heads']} -> {r['kv_cache_dtype']:>14}: {r['ms']:.2f} ms "
              f"({r['time_vs_fp32_cache']:.2f} x the fp32 cache's time)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "command": "python bench/ops_cpu.py " + " ".join(sys.argv[1:]),
                       "kv_quant_decode": decode, "kv_quant_write": write}, f, indent=1)  # fmt: skip
        print(f"\nwrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (median is reported)")
    parser.add_argument("--full", action="store_true", help="also 16k prefill at 32/8/128")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated attention dtypes")
    parser.add_argument("--prefill-only", action="store_true", help="attention prefill cases only")
    parser.add_argument("--kv-quant", action="store_true", help="only the int8 / fp8 KV-cache cases (decode, write)")
    parser.add_argument("--linear", action="store_true", help="only the decode GEMVs (lmx.ops.linear vs torch)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "lmx": ops.build_info(),
    }
    print(
        f"lmx CPU microbenchmarks — torch {info['torch']}, {info['threads']} threads, "
        f"attention ISA {info['lmx']['cpu_attention_isa']}, BLAS {info['lmx']['cpu_blas']}"
    )
    if args.kv_quant:
        return main_kv_quant(args, info)
    if args.linear:
        return main_linear(args, info)
    attention = []
    header = f"{'op':<8}{'len':>7}{'heads':>11}{'dtype':>10}{'lmx ms':>11}{'sdpa ms':>11}{'lmx/sdpa speed':>16}  rate"
    print(header)
    print("-" * len(header))
    cases = default_cases(args.full, tuple(args.dtypes.split(",")))
    for case in (c for c in cases if c.kind == "prefill" or not args.prefill_only):
        r = bench_attention(case, 1 if case.length > 4096 and case.kind == "prefill" else args.rounds)
        attention.append(r)
        rate = (
            f"{r['lmx_gflops']:.0f} vs {r['sdpa_gflops']:.0f} GFLOP/s"
            if case.kind == "prefill"
            else f"{r['lmx_gbps']:.1f} vs {r['sdpa_gbps']:.1f} GB/s of K/V"
        )
        heads = f"{case.num_q_heads}/{case.num_kv_heads}/{case.head_dim}"
        print(
            f"{case.kind:<8}{case.length:>7}{heads:>11}{case.dtype:>10}{r['lmx_ms']:>11.2f}{r['sdpa_ms']:>11.2f}"
            f"{r['speedup_vs_sdpa']:>15.2f}x  {rate}",
            flush=True,
        )
    rope = []
    print()
    for dtype in () if args.prefill_only else ("bfloat16", "float32"):
        for r in bench_rope_and_cache(4096, dtype, args.rounds):
            rope.append(r)
            print(
                f"{r['op']:<28}{r['tokens']:>6} tok {r['heads']:>10} {dtype:>9}  {r['op_ms']:7.2f} ms  "
                f"{r['op_gbps']:6.1f} GB/s = {r['fraction_of_copy']:.2f} x copy ({r['copy_gbps']:.1f} GB/s)"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "info": info,
                    "command": "python bench/ops_cpu.py " + " ".join(sys.argv[1:]),
                    "attention": attention,
                    "rope_and_cache": rope,
                },
                f,
                indent=1,
            )
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
