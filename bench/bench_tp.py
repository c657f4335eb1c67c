"""Tensor parallelism and memory: each rank's KV-cache bytes, and the longest session that fits per rank count.

Two parts, both written to ``bench/results/tp-memory.json`` (``--json``):

1. measured: a small random Llama (8 KV heads) run as ``EngineConfig(tp=N)`` for N = 1, 2 on this machine (Gloo);
   each rank reports the bytes of the KV cache it allocated for the same ``num_blocks``, and the engine's
   ``max_sequence_len`` for a fixed per-rank KV budget (``--budget-mib``) is read back. A greedy answer is
   compared with tp=1 as a check.
2. computed with the same code (the models built on torch's ``meta`` device with their real shards, so nothing is
   allocated): the published shapes of InternLM2.5-7B-Chat-1M, Llama-3-8B and Qwen2-7B in bf16 on devices of
   ``--device-gib`` GiB: per-rank weights, KV bytes per token, and the longest single session whose KV cache fits
   in ``--cache-fraction`` of what the weights leave (LMDeploy's ``cache_max_entry_count`` rule) on the fullest
   rank (rank 0, which also holds the LM head).

    python bench/bench_tp.py                         # table + bench/results/tp-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

GiB = 1024**3
MiB = 1024**2

# Published config.json shapes (the fields lmx reads).
MODELS = {
    "InternLM2.5-7B-Chat-1M": dict(
        architectures=["InternLM2ForCausalLM"], vocab_size=92544, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=262144,
        rope_theta=50000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bias=False,
        rope_scaling={"type": "dynamic", "factor": 2.5},
    ),
    "Llama-3-8B": dict(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    "Qwen2-7B": dict(
        architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
}  # fmt: skip
RANKS = (1, 2, 4, 8)


def rank_memory(config: dict, tp: int, dtype) -> list[dict] | str:
    """Per rank: weight bytes and KV bytes per token of its shard (the real sharding, on the meta device)."""
    import torch

    from lmx.engine.model_runner import ModelRunner
    from lmx.models import build_model

    out = []
    for rank in range(tp):
        try:
            with torch.device("meta"):
                model = build_model(config, tp_rank=rank, tp_size=tp, lm_head=rank == 0)
        except ValueError as e:
            return str(e)
        elem = torch.empty((), dtype=dtype).element_size()
        weights = sum(p.numel() for p in model.parameters()) * elem
        kv_token = ModelRunner.cache_bytes_per_block(model.local_cfg, 1, dtype)
        out.append({"rank": rank, "weight_bytes": weights, "kv_bytes_per_token": kv_token,
                    "kv_heads": model.local_cfg.num_kv_heads, "kv_replicas": model.shard.kv_replicas})  # fmt: skip
    return out


def computed_table(device_gib: float, fraction: float, block_size: int) -> list[dict]:
    import torch

    rows = []
    for name, config in MODELS.items():
        for tp in RANKS:
            ranks = rank_memory(config, tp, torch.bfloat16)
            if isinstance(ranks, str):
                rows.append({"model": name, "tp": tp, "error": ranks})
                continue
            budgets = [int((device_gib * GiB - r["weight_bytes"]) * fraction) for r in ranks]
            blocks = min(b // (r["kv_bytes_per_token"] * block_size) for b, r in zip(budgets, ranks))
            rows.append({
                "model": name, "tp": tp, "kv_heads_per_rank": ranks[0]["kv_heads"],
                "kv_replicas": ranks[0]["kv_replicas"],
                "weight_bytes_rank0": ranks[0]["weight_bytes"], "weight_bytes_other": ranks[-1]["weight_bytes"],
                "kv_bytes_per_token_per_rank": ranks[0]["kv_bytes_per_token"],
                "max_session_tokens": max(0, blocks) * block_size,
            })  # fmt: skip
    return rows


def measured(budget_mib: int, block_size: int) -> list[dict]:
    """tp = 1, 2 on a small random Llama with 8 KV heads (CPU, Gloo): bytes each rank allocated."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))
    from engine_helpers import make_tiny_model, random_prompt

    from lmx import EngineConfig, GenerationConfig, pipeline

    directory = Path(tempfile.mkdtemp(prefix="lmx-bench-tp-"))
    make_tiny_model(directory, "llama", "default", num_attention_heads=8, num_key_value_heads=8, hidden_size=512,
                    intermediate_size=1024, num_hidden_layers=4)  # fmt: skip
    rows, first = [], None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for tp in (1, 2):
        if tp > cpus:
            break
        base = dict(dtype="float32", device="cpu", block_size=block_size, num_threads=1, tp=tp, session_len=10**7)
        with pipeline(directory, engine_config=EngineConfig(num_blocks=64, **base)) as pipe:
            per_rank = list(pipe.engine.kv_cache_bytes_per_rank)
            answer = pipe(random_prompt(30, seed=1), gen_config=GenerationConfig(max_new_tokens=16, ignore_eos=True))
        per_block = per_rank[0] // 64
        with pipeline(directory, engine_config=EngineConfig(num_blocks=budget_mib * MiB // per_block, **base)) as pipe:
            longest = pipe.max_sequence_len
            budget_rank_bytes = list(pipe.engine.kv_cache_bytes_per_rank)
        first = first or answer.token_ids
        rows.append({"tp": tp, "kv_bytes_per_rank_64_blocks": per_rank, "kv_bytes_per_token_per_rank": per_block
                     // block_size, "budget_mib_per_rank": budget_mib, "kv_bytes_per_rank_at_budget":
                     budget_rank_bytes, "max_session_tokens": longest, "greedy_equal_tp1": answer.token_ids == first})  # fmt: skip
    return rows


def failure_latency() -> dict:
    """Seconds from a worker's SIGKILL (idle; mid-generation) or SIGSTOP (with LMX_TP_TIMEOUT=4) to the error."""
    import signal
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))
    from engine_helpers import fp32_engine_config, make_tiny_model

    from lmx import GenerationConfig, pipeline
    from lmx.distributed.runtime import WorkerLostError

    directory = Path(tempfile.mkdtemp(prefix="lmx-bench-tp-fail-"))
    make_tiny_model(directory, "llama", "default", seed=1)
    short, long = GenerationConfig(max_new_tokens=8, ignore_eos=True), GenerationConfig(max_new_tokens=400)
    out = {}
    for mode in ("killed_idle", "killed_mid_generation", "stopped_timeout_4s"):
        if mode == "stopped_timeout_4s":
            os.environ["LMX_TP_TIMEOUT"] = "4"
        pipe = pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2))
        pipe([1, 2, 3], gen_config=short)
        [worker] = pipe.engine._tp.procs
        start = None
        try:
            if mode == "killed_mid_generation":
                for i, _ in enumerate(pipe.stream_infer([[7, 8, 9]] * 4, gen_config=long)):
                    if i == 8:
                        os.kill(worker.pid, signal.SIGKILL)
                        start = time.monotonic()
            else:
                os.kill(worker.pid, signal.SIGKILL if mode == "killed_idle" else signal.SIGSTOP)
                start = time.monotonic()
                pipe([1, 2, 3], gen_config=short)
        except WorkerLostError as e:
            out[mode] = {"seconds": round(time.monotonic() - start, 3), "error": str(e)[:160]}
        finally:
            if mode == "stopped_timeout_4s":
                os.kill(worker.pid, signal.SIGKILL)
                del os.environ["LMX_TP_TIMEOUT"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device-gib", type=float, default=80.0, help="memory of one device (default 80)")
    parser.add_argument("--cache-fraction", type=float, default=0.8, help="of what the weights leave (default 0.8)")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--budget-mib", type=int, default=64, help="per-rank KV budget of the measured part")
    parser.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "tp-memory.json"))
    parser.add_argument("--skip-measured", action="store_true")
    args = parser.parse_args(argv)

    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "config": vars(args), "measured": [], "computed": []}  # fmt: skip
    if not args.skip_measured:
        result["measured"] = measured(args.budget_mib, args.block_size)
        print("measured (random Llama, 4 layers, 8 KV heads x 64, fp32, CPU/Gloo; bytes reported by each rank):")
        print(f"{'tp':>3} {'KV bytes/token/rank':>20} {'KV bytes per rank (64 blocks)':>32} "
              f"{'longest session @' + str(args.budget_mib) + ' MiB/rank':>28} {'same tokens':>12}")  # fmt: skip
        for r in result["measured"]:
            print(f"{r['tp']:>3} {r['kv_bytes_per_token_per_rank']:>20,} {str(r['kv_bytes_per_rank_64_blocks']):>32} "
                  f"{r['max_session_tokens']:>28,} {str(r['greedy_equal_tp1']):>12}")  # fmt: skip
        print()
        result["failure_latency"] = failure_latency()
        print("failure detection (tiny Llama, tp=2): seconds from the signal to WorkerLostError")
        for mode, r in result["failure_latency"].items():
            print(f"  {mode:<24} {r['seconds']:>6.3f} s  {r['error'][:90]}")
        print()
    result["computed"] = computed_table(args.device_gib, args.cache_fraction, args.block_size)
    print(
        f"computed (bf16, {args.device_gib:g} GiB per device, KV cache = {args.cache_fraction:g} x what the "
        "weights leave on rank 0):"
    )
    print(f"{'model':<24}{'tp':>3} {'KV heads/rank':>14} {'weights rank 0':>15} {'KV KiB/token/rank':>18} "
          f"{'longest session':>16}")  # fmt: skip
    for r in result["computed"]:
        if "error" in r:
            print(f"{r['model']:<24}{r['tp']:>3}  -- {r['error']}")
            continue
        heads = f"{r['kv_heads_per_rank']}" + (f" (x{r['kv_replicas']})" if r["kv_replicas"] > 1 else "")
        print(f"{r['model']:<24}{r['tp']:>3} {heads:>14} {r['weight_bytes_rank0'] / GiB:>11.2f} GiB "
              f"{r['kv_bytes_per_token_per_rank'] / 1024:>18g} {r['max_session_tokens']:>16,}")  # fmt: skip
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
