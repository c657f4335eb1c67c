"""Where the engine's decode time goes at a long context: one sequence through ``LLMEngine.step``, timed per kind.

    python bench/profile_decode.py --context 8192 --dtype float32          # 32 decode steps after the prefill
    python bench/profile_decode.py --context 8192 --dtype auto --steps 64 --json out.json

SmolLM2-135M from the embedded GGUF. The prompt is prefilled (not timed), then each decode step's wall time is
split by wrapping the functions a step calls with ``time.perf_counter`` (self time: a region's nested regions are
counted in their own rows): the linear layers' GEMVs, the LM head (``compute_logits``), paged attention, the
fused RoPE + cache write, the rest of the model's forward (RMSNorm, SiLU, adds, embedding and the model's Python),
the step's metadata (``ModelRunner.prepare``), sampling and the engine's own Python (scheduler, block manager,
detokenizer). The PyTorch profiler is not used: it slowed oneDNN's GEMVs several-fold here. Also prints the
bytes a decode step must read (weights, LM head, K/V at this context) and the bandwidth that implies.
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

ROWS = (
    ("gemm", "linear layers (qkv, o, gate_up, down)"),
    ("logits", "LM head (compute_logits)"),
    ("attention", "paged attention (decode kernel)"),
    ("rope_cache", "RoPE + KV-cache write (fused op)"),
    ("model", "model's rest: norms, SiLU*up, adds, embedding, Python"),
    ("prepare", "step metadata (ModelRunner.prepare)"),
    ("sample", "sampling (argmax / sampler)"),
    ("engine", "engine Python: scheduler, blocks, detokenizer"),
)


class Timers:
    """Self time per label: a region's time minus that of the regions it encloses."""

    def __init__(self) -> None:
        self.self_s: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [label, start, time of children]

    def wrap(self, obj, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def wrapped(*a, **k):
            # the LM head's GEMV (a linear inside compute_logits) counts as the LM head
            own = "logits" if self._stack and self._stack[-1][0] == "logits" else label
            self._stack.append([own, time.perf_counter(), 0.0])
            try:
                return fn(*a, **k)
            finally:
                _, start, children = self._stack.pop()
                total = time.perf_counter() - start
                self.self_s[own] += total - children
                if self._stack:
                    self._stack[-1][2] += total

        setattr(obj, name, wrapped)


def step_bytes(cfg, context: int, elem: int) -> dict[str, int]:
    H, D, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    per_layer = (cfg.num_heads + 2 * cfg.num_kv_heads) * D * H + H * cfg.num_heads * D + 3 * inter * H
    return {
        "layer_weights": cfg.num_layers * per_layer * elem,
        "lm_head": cfg.vocab_size * H * elem,
        "kv": cfg.num_layers * 2 * context * cfg.num_kv_heads * D * elem,
    }


def profile(context: int, steps: int, dtype: str) -> dict:
    import lmx.models.llama as llama
    from lmx import EngineConfig, GenerationConfig, ops, pipeline

    block_size = 64
    session_len = context + steps + 2
    pipe = pipeline("smollm2-135m", engine_config=EngineConfig(
        dtype=dtype, device="cpu", session_len=session_len, max_batch_size=1, block_size=block_size,
        num_blocks=-(-session_len // block_size) + 2))  # fmt: skip
    engine = pipe.engine
    runner, model = engine.runner, engine.runner.model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, runner.cfg.vocab_size - 100, (context,), generator=g).tolist()
    seq = engine.add_request(ids, GenerationConfig(max_new_tokens=steps + 4, ignore_eos=True))
    while seq.num_output_tokens == 0:
        engine.step()  # the prefill, untimed
    for _ in range(3):
        engine.step()  # warm-up decode steps

    t = Timers()
    t.wrap(engine, "step", "engine")
    t.wrap(runner, "prepare", "prepare")
    t.wrap(engine.sampler, "sample", "sample")
    t.wrap(model, "forward", "model")
    t.wrap(model, "compute_logits", "logits")
    t.wrap(llama, "linear", "gemm")
    t.wrap(ops, "paged_attention", "attention")
    t.wrap(ops, "rotary_embedding_and_cache", "rope_cache")
    step_s = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        step_s.append(time.perf_counter() - t0)
    wall = sum(step_s)
    elem = runner.kv_cache.element_size()
    nbytes = step_bytes(runner.cfg, context, elem)
    return {
        "context": context,
        "steps": steps,
        "dtype": str(runner.kv_cache.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "step_ms_median": 1e3 * sorted(step_s)[len(step_s) // 2],
        "decode_tok_s": steps / wall,
        "ms_per_step": {k: 1e3 * v / steps for k, v in t.self_s.items()},
        "bytes_per_step": nbytes,
    }


def print_table(r: dict) -> None:
    ms = r["ms_per_step"]
    total = sum(ms.values())
    print(f"SmolLM2-135M decode at {r['context']} tokens, {r['dtype']}, {r['threads']} threads, {r['steps']} steps: "
          f"{r['decode_tok_s']:.1f} tok/s, median step {r['step_ms_median']:.2f} ms")  # fmt: skip
    print(f"{'where':<56}{'ms/step':>9}{'share':>8}")
    for key, label in ROWS:
        print(f"{label:<56}{ms.get(key, 0.0):>9.2f}{100 * ms.get(key, 0.0) / total:>7.1f}%")
    b = r["bytes_per_step"]
    gb = {k: v / 1e9 for k, v in b.items()}
    for key, label in (("layer_weights", "gemm"), ("lm_head", "logits"), ("kv", "attention")):
        print(f"{key:<14} {gb[key] * 1e3:7.1f} MB/step, read at {gb[key] / (ms.get(label, 1e-9) / 1e3):5.1f} GB/s")
    print(f"all bytes {sum(gb.values()) * 1e3:.0f} MB/step: {sum(gb.values()) / (total / 1e3):.1f} GB/s over the step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    r = profile(args.context, args.steps, args.dtype)
    print_table(r)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
