"""Where the engine's prefill time goes: one long prompt through ``LLMEngine.step`` under the PyTorch profiler.

    python bench/profile_prefill.py --context 8192                 # dtype auto, the engine's default chunk
    python bench/profile_prefill.py --context 15360 --chunk 2048 --dtype float32
    python bench/profile_prefill.py --context 8192 --compare-chunks 1024,2048,4096,8192 --rounds 3

SmolLM2-135M from the embedded GGUF, one sequence, ``max_new_tokens=1`` (the prefill and its first token). Every
profiled op's *self* time (on the calling thread, so intra-op threads are included as wall time) is put in one
row: the paged-attention kernel (staging of paged K/V into fp32 included), the fused RoPE + cache write, the
linear layers' GEMMs, the other element-wise work (RMSNorm, SiLU, residual adds, casts, embedding), the final
logits (``compute_logits``), the step's metadata tensors (``ModelRunner.prepare``) and sampling. What is left of
the steps' wall time is Python (the model's and the engine's, scheduler and block manager included). Prints one
table; ``--json`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GEMM_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::matmul",
    "aten::linear",
    "mkldnn::_linear_pointwise",
    "aten::_mkldnn_linear",
}
ROWS = (
    ("attention", "paged attention kernel (tiles, softmax, K/V staging)"),
    ("rope_cache", "RoPE + KV-cache write (fused op)"),
    ("gemm", "linear-layer GEMMs (qkv, o, gate_up, down)"),
    ("elementwise", "RMSNorm, SiLU*up, residual adds, casts, embedding"),
    ("logits", "final logits (compute_logits)"),
    ("prepare", "step metadata (ModelRunner.prepare)"),
    ("sample", "sampling"),
    ("python", "Python: model, engine, scheduler (rest of the steps)"),
)


def _category(evt) -> str:
    """The row an op's self time belongs to: the first enclosing region of ours, else the op itself."""
    node = evt
    while node is not None:
        if node.name in ("lmx.logits", "lmx.prepare", "lmx.sample"):
            return node.name.split(".")[1]
        node = node.cpu_parent
    if evt.name == "lmx::paged_attention":
        return "attention"
    if evt.name.startswith("lmx::rotary") or evt.name == "lmx::reshape_and_cache":
        return "rope_cache"
    if evt.name in GEMM_OPS:
        return "gemm"
    return "elementwise"


def _wrap(obj, name: str, label: str) -> None:
    fn = getattr(obj, name)

    def wrapped(*a, **k):
        with torch.profiler.record_function(label):
            return fn(*a, **k)

    setattr(obj, name, wrapped)


def profile(context: int, chunk: int | None, dtype: str, threads: int | None) -> dict:
    from lmx import EngineConfig, GenerationConfig, pipeline

    if threads:
        torch.set_num_threads(threads)
    block_size = 64
    session_len = context + 2
    kwargs = {} if chunk is None else {"max_prefill_token_num": chunk}
    pipe = pipeline("smollm2-135m", engine_config=EngineConfig(
        dtype=dtype, device="cpu", session_len=session_len, max_batch_size=1, block_size=block_size,
        num_blocks=-(-session_len // block_size) + 8, **kwargs))  # fmt: skip
    engine = pipe.engine
    chunk = engine.config.max_prefill_token_num
    runner = engine.runner
    _wrap(runner, "prepare", "lmx.prepare")
    _wrap(runner.model, "compute_logits", "lmx.logits")
    _wrap(engine.sampler, "sample", "lmx.sample")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, runner.cfg.vocab_size - 100, (context,), generator=g).tolist()

    # Warm-up: one short prompt (weights paged in, kernels' first calls).
    warm = engine.add_request(ids[:256], GenerationConfig(max_new_tokens=1, ignore_eos=True))
    while not warm.is_finished:
        engine.step()

    seq = engine.add_request(ids, GenerationConfig(max_new_tokens=1, ignore_eos=True))
    step_s = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        while seq.num_output_tokens == 0:
            t0 = time.perf_counter()
            engine.step()
            step_s.append(time.perf_counter() - t0)
    wall_us = sum(step_s) * 1e6
    totals: dict[str, float] = defaultdict(float)
    for evt in prof.events():
        if evt.name.startswith("lmx.") or evt.name.startswith("ProfilerStep"):
            continue  # our regions have ~no self time of their own; their ops are counted below
        totals[_category(evt)] += evt.self_cpu_time_total
    totals["python"] = max(0.0, wall_us - sum(totals.values()))
    return {
        "context": context,
        "chunk": chunk,
        "dtype": str(runner.kv_cache.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "steps": len(step_s),
        "wall_s": wall_us / 1e6,
        "prefill_tok_s": context / (wall_us / 1e6),
        "us": dict(totals),
    }


def compare_chunks(context: int, chunks: list[int], dtype: str, rounds: int) -> dict[int, list[float]]:
    """Prefill tokens/s of one engine for each prefill chunk, the chunks alternating round by round (no profiler)."""
    from lmx import EngineConfig, GenerationConfig, pipeline

    session_len = context + 2
    pipe = pipeline("smollm2-135m", engine_config=EngineConfig(
        dtype=dtype, device="cpu", session_len=session_len, max_batch_size=1, block_size=64,
        num_blocks=-(-session_len // 64) + 8, enable_prefix_caching=False))  # fmt: skip
    engine = pipe.engine
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, engine.runner.cfg.vocab_size - 100, (context,), generator=g).tolist()
    rates: dict[int, list[float]] = {c: [] for c in chunks}
    for _ in range(rounds):
        for chunk in chunks:
            engine.scheduler.max_prefill_token_num = chunk
            seq = engine.add_request(ids, GenerationConfig(max_new_tokens=1, ignore_eos=True))
            t0 = time.perf_counter()
            while not seq.is_finished:
                engine.step()
            rates[chunk].append(context / (time.perf_counter() - t0))
    return rates


def print_table(r: dict) -> None:
    print(
        f"SmolLM2-135M prefill of {r['context']} tokens, {r['dtype']}, chunk {r['chunk']} ({r['steps']} steps), "
        f"{r['threads']} threads: {r['wall_s']:.2f} s, {r['prefill_tok_s']:.0f} tok/s"
    )
    print(f"{'where':<56}{'s':>8}{'share':>8}")
    for key, label in ROWS:
        us = r["us"].get(key, 0.0)
        print(f"{label:<56}{us / 1e6:>8.2f}{100 * us / (r['wall_s'] * 1e6):>7.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=None, help="max_prefill_token_num (default: the engine's)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--compare-chunks",
        default=None,
        help="e.g. 1024,2048,8192: prefill tok/s per chunk, alternating, instead of the profile",
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.compare_chunks:
        rates = compare_chunks(args.context, [int(c) for c in args.compare_chunks.split(",")], args.dtype, args.rounds)
        print(f"prefill of {args.context} tokens, {args.dtype}: tok/s per round")
        for chunk, r in rates.items():
            print(f"chunk {chunk:>6}: " + " ".join(f"{x:7.1f}" for x in r) + f"   median {sorted(r)[len(r) // 2]:.1f}")
        return
    r = profile(args.context, args.chunk, args.dtype, args.threads)
    print_table(r)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
