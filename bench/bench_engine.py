"""lmx's engine against transformers on the CPU: same model (SmolLM2-135M, the embedded GGUF), same dtype, same
machine, one run. Prefill throughput at a long context, decode throughput at that context, peak memory.

    python bench/bench_engine.py --context 8192 --decode-tokens 32 --json out/bench_engine.json

Each side runs in its own subprocess so that peak memory (ru_maxrss) is its own. Reported as ratios lmx / HF.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def prompt_ids(context: int, vocab: int = 49152) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(100, vocab - 100, (context,), generator=g).tolist()


def worker_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lmx.loaders import resolve_alias

    path = resolve_alias("smollm2-135m")
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    ids = torch.tensor([prompt_ids(args.context)])
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - t0
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(token)]
        t0 = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token))
        decode_s = time.perf_counter() - t0
    return _result(args, prefill_s, decode_s, tokens)


def worker_lmx(args) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lmx import EngineConfig, GenerationConfig, pipeline

    block_size = 64
    session_len = args.context + args.decode_tokens + 1
    num_blocks = -(-session_len // block_size)  # exactly one session, as transformers' cache holds one
    pipe = pipeline(
        "smollm2-135m",
        engine_config=EngineConfig(
            dtype=args.dtype, device="cpu", session_len=session_len, max_batch_size=1, block_size=block_size,
            num_blocks=num_blocks, max_prefill_token_num=args.prefill_chunk,
        ),
    )  # fmt: skip
    engine = pipe.engine
    seq = engine.add_request(prompt_ids(args.context), GenerationConfig(max_new_tokens=args.decode_tokens + 1,
                                                                        ignore_eos=True))
    t0 = time.perf_counter()
    while seq.num_output_tokens == 0:  # the prompt, in chunks of --prefill-chunk, and the first token
        engine.step()
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    while not seq.is_finished:
        engine.step()
    decode_s = time.perf_counter() - t0
    return _result(args, prefill_s, decode_s, seq.output_ids)


def _result(args, prefill_s: float, decode_s: float, tokens: list[int]) -> dict:
    return {
        "prefill_tok_s": args.context / prefill_s,
        "decode_tok_s": args.decode_tokens / decode_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens": tokens,
    }


def run_worker(side: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--context", str(args.context),
           "--decode-tokens", str(args.decode_tokens), "--dtype", args.dtype, "--prefill-chunk", str(args.prefill_chunk)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--prefill-chunk", type=int, default=2048, help="lmx's max_prefill_token_num")
    parser.add_argument("--json", default="out/bench_engine.json")
    parser.add_argument("--worker", choices=["hf", "lmx"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps((worker_hf if args.worker == "hf" else worker_lmx)(args)))
        return

    hf, lmx = run_worker("hf", args), run_worker("lmx", args)
    rows = [
        ("prefill tok/s", "prefill_tok_s", True),
        ("decode tok/s", "decode_tok_s", True),
        ("peak RSS MiB", "peak_rss_mib", False),
    ]
    print(f"SmolLM2-135M {args.dtype}, context {args.context}, {args.decode_tokens} decode steps, "
          f"lmx prefill chunk {args.prefill_chunk}, {os.cpu_count()} CPUs")
    print(f"{'metric':<16}{'transformers':>14}{'lmx':>12}{'lmx / hf':>10}")
    ratios = {}
    for label, key, _ in rows:
        ratios[key] = lmx[key] / hf[key]
        print(f"{label:<16}{hf[key]:>14.1f}{lmx[key]:>12.1f}{ratios[key]:>10.2f}")
    same = sum(a == b for a, b in zip(hf["tokens"], lmx["tokens"]))
    print(f"greedy tokens equal: {same}/{min(len(hf['tokens']), len(lmx['tokens']))} (bf16: small drift is expected)")
    result = {"context": args.context, "decode_tokens": args.decode_tokens, "dtype": args.dtype,
              "prefill_chunk": args.prefill_chunk,
              "cpus": os.cpu_count(), "transformers": hf, "lmx": lmx, "ratio_lmx_over_hf": ratios}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
