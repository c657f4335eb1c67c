"""Accuracy of the quantized KV caches on the embedded SmolLM2-135M-Instruct (issue 12): perplexity against context
length and passkey retrieval, with dynamic NTK (factor 2), for the unquantized cache against int8 and fp8.

    nice python bench/kv_quant_accuracy.py                    # writes bench/results/kv-quant-accuracy.json

Each configuration is ``compute dtype:kv_cache_dtype`` (``float32:auto`` is the fp32 cache, ``bfloat16:auto``
the bf16 one). Perplexity: the ppl eval's default text (standard-library docstrings, offline), its first L tokens
scored as one sequence. Lengths up to the trained context (8192) are read from one scoring pass over the first
8192 tokens: attention is causal and dynamic NTK keeps the model's base up to the trained length, so the mean
NLL of its first L - 1 predictions is the perplexity of the L-token prefix (the same numbers ``get_ppl`` of each
prefix gives, up to fp32 summation order). Longer lengths are one pass each (their dynamic base depends on L).
Passkey: seed 000's prompt at ~4k and ~15k tokens, the same keys and depths for every configuration (``lmx
passkey``'s items); the table lists each answer.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIGS = ["float32:auto", "float32:int8", "float32:fp8"]
PPL_LENGTHS = [1024, 2048, 4096, 8192, 15360]
PASSKEY_LENGTHS = [4096, 15360]


def build_pipe(model: str, dtype: str, kv: str, session_len: int, factor: float, threads: int | None):
    from lmx import EngineConfig, pipeline

    config = EngineConfig(
        dtype=dtype, device="cpu", kv_cache_dtype=kv, rope_scaling_factor=factor, session_len=session_len,
        max_batch_size=1, block_size=64, enable_prefix_caching=False, num_threads=threads,
    )  # fmt: skip
    return pipeline(model, engine_config=config)


def token_logprobs(pipe, ids: list[int]) -> list[float]:
    seq = pipe.add_scoring_request(ids, top_logprobs=0)
    for _ in pipe.run_until_done([seq]):
        pass
    return [lp for lp, _ in pipe.prompt_logprobs(seq)]


def run_ppl(pipe, ids: list[int], lengths: list[int], trained: int) -> dict[int, float]:
    out: dict[int, float] = {}
    short = [n for n in lengths if n <= trained]
    if short:
        lps = token_logprobs(pipe, ids[: max(short)])
        for n in short:
            out[n] = math.exp(-sum(lps[: n - 1]) / (n - 1))
    for n in (n for n in lengths if n > trained):
        out[n] = math.exp(pipe.get_ppl([ids[:n]])[0])
    return out


def run_passkey(pipe, items) -> list[dict]:
    from lmx.engine import GenerationConfig
    from lmx.evals.common import generate_batch, prompt_ids
    from lmx.evals.passkey import extract_pass_key

    gen = GenerationConfig(max_new_tokens=16, do_sample=False, random_seed=0)
    out = []
    for item in items:  # one at a time: max_batch_size 1 keeps the cache small
        ids = prompt_ids(pipe, item.prompt, chat=False)
        (text,), _ = generate_batch(pipe, [ids], gen)
        answer = extract_pass_key(text)
        out.append({"length": item.length, "round": item.round, "prompt_tokens": len(ids), "pass_key": item.pass_key,
                    "answer": answer, "correct": answer == item.pass_key, "response": text})  # fmt: skip
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, metavar="DTYPE:KV")
    p.add_argument("--lengths", nargs="+", type=int, default=PPL_LENGTHS)
    p.add_argument("--passkey-lengths", nargs="*", type=int, default=PASSKEY_LENGTHS)
    p.add_argument("--rounds", type=int, default=1, help="passkey prompts per length")
    p.add_argument("--factor", type=float, default=2.0, help="dynamic NTK factor (rope_scaling_factor)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "kv-quant-accuracy.json"))
    args = p.parse_args(argv)

    from lmx.evals.passkey import make_items
    from lmx.evals.ppl import default_text

    session_len = max(args.lengths + args.passkey_lengths) + 256
    results: dict[str, dict] = {}
    ids = items = None
    for spec in args.configs:
        dtype, kv = spec.split(":")
        start = time.perf_counter()
        pipe = build_pipe(args.model, dtype, kv, session_len, args.factor, args.threads)
        trained = pipe.engine.model_config.max_position_embeddings
        if ids is None:
            ids = pipe.tokenizer.encode(default_text())
            items = make_items(pipe.tokenizer, args.passkey_lengths, args.rounds, seed=0)
        ppl = run_ppl(pipe, ids, args.lengths, trained)
        amax = None
        if kv == "auto":  # what fp8's per-head scale must cover: max |K|, |V| over the cached tokens (0 elsewhere)
            cache = pipe.engine.runner.kv_cache.float().nan_to_num(0.0).abs()  # [layers, 2, blocks, bs, Hkv, D]
            amax = {"k": cache[:, 0].amax().item(), "v": cache[:, 1].amax().item(),
                    "k_per_layer": cache[:, 0].amax(dim=(1, 2, 4)).tolist(),
                    "v_per_layer": cache[:, 1].amax(dim=(1, 2, 4)).tolist()}  # fmt: skip
            del cache
        passkey = run_passkey(pipe, items) if args.passkey_lengths else []
        stats = pipe.engine.kv_cache_stats()
        results[spec] = {"ppl": ppl, "passkey": passkey, "kv_cache": stats, "kv_amax": amax,
                         "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        print(f"{spec}: ppl {', '.join(f'{n}: {v:.4f}' for n, v in ppl.items())}; passkey "
              f"{[r['answer'] for r in passkey]} ({results[spec]['seconds']} s)", flush=True)  # fmt: skip
        del pipe

    # The table: one row per configuration; ppl and its change against the unquantized cache of the same dtype.
    header = ["config", "bytes/token"] + [f"ppl {n}" for n in args.lengths]
    header += [f"passkey {n}" for n in args.passkey_lengths]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec, r in results.items():
        base = results.get(spec.split(":")[0] + ":auto")
        cells = [f"`{spec}`", str(r["kv_cache"]["kv_cache_bytes"] // r["kv_cache"]["capacity_tokens"])]
        for n in args.lengths:
            v = r["ppl"][n]
            if base is not None and base is not r:
                cells.append(f"{v:.3f} ({100 * (v / base['ppl'][n] - 1):+.2f}%)")
            else:
                cells.append(f"{v:.3f}")
        for n in args.passkey_lengths:
            recs = [x for x in r["passkey"] if x["length"] == n]
            cells.append(", ".join(f"{x['answer']}{'' if x['correct'] else ' ✗'}" for x in recs))
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    keys = [f"{x['pass_key']}" for x in (next(iter(results.values()))["passkey"] if results else [])]
    print(f"\npass keys: {keys}")
    for spec, r in results.items():
        if r["kv_amax"]:
            print(
                f"{spec}: max |K| {r['kv_amax']['k']:.2f}, max |V| {r['kv_amax']['v']:.2f} (fp8 e4m3 holds 448 x scale)"
            )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "python bench/kv_quant_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "rope_scaling_factor": args.factor, "machine": platform.processor() or platform.machine(),
        "text": "lmx.evals.ppl.default_text()", "results": results, "table_markdown": table,
    }  # fmt: skip
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
