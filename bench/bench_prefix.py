"""Prefix caching on the CPU: the embedded SmolLM2-135M, the same engine with caching on and off, one run.

    python bench/bench_prefix.py --doc-tokens 8000 --json bench/results/prefix-cpu.json

Two workloads, each on a fresh engine per setting:

* document QA: a document of ``--doc-tokens`` tokens (the seed-000 noise sentences with five facts at depths
  10-90 %) then five questions about it, one after the other, each through the chat template (document first,
  question last). Time to first token (TTFT) of each question; questions 2-5 find the document in the cache.
* multi-turn chat: ``--turns`` turns; the first message carries a ``--chat-doc-tokens`` document, every turn
  resends the whole conversation (the previous answers included), as a chat client does.

Greedy decoding, ``--new-tokens`` tokens per answer; the answers with caching on must equal those with it off.
TTFT is measured in the engine: from queuing the token ids to the first sampled token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

FACTS = [
    ("The lighthouse keeper is called Marta Voss.", "What is the lighthouse keeper called?"),
    ("The vault code is 4729.", "What is the vault code?"),
    ("The ship in the harbour is painted red.", "What colour is the ship in the harbour?"),
    ("The meeting is on Thursday at noon.", "When is the meeting?"),
    ("The cat of the baker is named Pepper.", "What is the baker's cat named?"),
]


def document(tokenizer, num_tokens: int) -> str:
    """Noise sentences up to ``num_tokens`` tokens, with the facts at depths 10, 30, 50, 70, 90 %."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lmx.evals.niah import default_haystack

    noise = default_haystack()
    per_noise = len(tokenizer.encode(" " + noise))
    fact_tokens = sum(len(tokenizer.encode(" " + f)) for f, _ in FACTS)
    repeats = max(len(FACTS), (num_tokens - fact_tokens) // per_noise)
    parts = [noise] * repeats
    for i, (fact, _) in enumerate(reversed(FACTS)):  # insert from the back so the depths stay put
        depth = 0.9 - 0.2 * i
        parts.insert(int(repeats * depth), fact)
    return " ".join(parts)


def make_engine(args, caching: bool, session_len: int):
    from lmx import EngineConfig, pipeline

    config = EngineConfig(
        dtype=args.dtype, device="cpu", session_len=session_len, max_batch_size=1, block_size=args.block_size,
        max_prefill_token_num=args.prefill_chunk, enable_prefix_caching=caching,
    )  # fmt: skip
    return pipeline("smollm2-135m", engine_config=config)


def ask(pipe, ids: list[int], new_tokens: int) -> dict:
    """One greedy request alone on the engine: TTFT, total time, the answer, how many tokens came from the cache."""
    from lmx import GenerationConfig

    engine = pipe.engine
    t0 = time.perf_counter()
    seq = engine.add_request(ids, GenerationConfig(max_new_tokens=new_tokens))
    while seq.num_output_tokens == 0 and not seq.is_finished:
        engine.step()
    ttft = time.perf_counter() - t0
    while not seq.is_finished:
        engine.step()
    total = time.perf_counter() - t0
    answer = engine.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
    return {"prompt_tokens": len(ids), "cached_tokens": seq.num_cached_tokens, "ttft_s": ttft, "total_s": total,
            "output_ids": seq.output_ids, "answer": answer}  # fmt: skip


def document_qa(args) -> dict:
    runs = {}
    for caching in (False, True):
        pipe = make_engine(args, caching, session_len=args.doc_tokens + 512)
        doc = document(pipe.tokenizer, args.doc_tokens)
        prompts = [pipe.encode([{"role": "user", "content": f"Read the document, then answer the question.\n\n{doc}"
                                                              f"\n\nQuestion: {q} Answer in a few words."}])
                   for _, q in FACTS]  # fmt: skip
        runs["on" if caching else "off"] = [ask(pipe, ids, args.new_tokens) for ids in prompts]
        runs["stats_" + ("on" if caching else "off")] = pipe.engine.scheduler.stats()
        del pipe
    return runs


def multi_turn(args) -> dict:
    runs = {}
    for caching in (False, True):
        pipe = make_engine(args, caching, session_len=args.chat_doc_tokens + 256 * args.turns)
        doc = document(pipe.tokenizer, args.chat_doc_tokens)
        messages = [{"role": "user", "content": f"Here are my notes:\n\n{doc}\n\n{FACTS[0][1]}"}]
        turns = []
        for turn in range(args.turns):
            result = ask(pipe, pipe.encode(messages), args.new_tokens)
            turns.append(result)
            messages.append({"role": "assistant", "content": result["answer"]})
            _, question = FACTS[(turn + 1) % len(FACTS)]
            messages.append({"role": "user", "content": question})
        runs["on" if caching else "off"] = turns
        runs["stats_" + ("on" if caching else "off")] = pipe.engine.scheduler.stats()
        del pipe
    return runs


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def print_table(title: str, label: str, runs: dict) -> dict:
    off, on = runs["off"], runs["on"]
    print(title)
    print(f"{label:>6}{'prompt':>8}{'cached':>8}{'TTFT off s':>12}{'TTFT on s':>11}{'speed-up':>10}  answer equal")
    for i, (a, b) in enumerate(zip(off, on)):
        equal = "yes" if a["output_ids"] == b["output_ids"] else "NO"
        print(f"{i + 1:>6}{b['prompt_tokens']:>8}{b['cached_tokens']:>8}{a['ttft_s']:>12.3f}{b['ttft_s']:>11.3f}"
              f"{a['ttft_s'] / b['ttft_s']:>9.1f}x  {equal}")  # fmt: skip
    later_off, later_on = mean([r["ttft_s"] for r in off[1:]]), mean([r["ttft_s"] for r in on[1:]])
    summary = {
        "mean_ttft_later_off_s": later_off,
        "mean_ttft_later_on_s": later_on,
        "ttft_speedup_later": later_off / later_on,
        "total_off_s": sum(r["total_s"] for r in off),
        "total_on_s": sum(r["total_s"] for r in on),
        "answers_equal": all(a["output_ids"] == b["output_ids"] for a, b in zip(off, on)),
        "hit_rate_on": runs["stats_on"]["hit_rate"],
    }
    print(f"{label}s 2-{len(on)}: mean TTFT {later_off:.3f} s off, {later_on:.3f} s on: "
          f"{summary['ttft_speedup_later']:.1f}x lower; wall time {summary['total_off_s']:.1f} s off, "
          f"{summary['total_on_s']:.1f} s on; cache hit rate {summary['hit_rate_on']:.1%}; "
          f"answers equal: {'yes' if summary['answers_equal'] else 'NO'}")  # fmt: skip
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc-tokens", type=int, default=8000, help="document length of the QA workload")
    parser.add_argument("--chat-doc-tokens", type=int, default=2048, help="document in the chat's first message")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=24, help="greedy tokens per answer")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--prefill-chunk", type=int, default=2048, help="max_prefill_token_num")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", default="bench/results/prefix-cpu.json")
    args = parser.parse_args()

    print(f"SmolLM2-135M {args.dtype}, block size {args.block_size}, prefill chunk {args.prefill_chunk}, "
          f"{args.new_tokens} greedy tokens per answer, {os.cpu_count()} CPUs, torch threads "
          f"{__import__('torch').get_num_threads()}")  # fmt: skip
    qa = document_qa(args)
    qa_summary = print_table(f"document QA: {args.doc_tokens}-token document, {len(FACTS)} questions", "question", qa)
    chat = multi_turn(args)
    chat_summary = print_table(f"multi-turn chat: {args.turns} turns, first message with a {args.chat_doc_tokens}-"
                               "token document", "turn", chat)  # fmt: skip
    goal = qa_summary["ttft_speedup_later"] >= 20
    print(
        f"goal (repeated-document TTFT >= 20x lower, answers identical): "
        f"{'met' if goal and qa_summary['answers_equal'] else 'NOT met'}"
    )
    result = {"args": vars(args), "cpus": os.cpu_count(), "document_qa": {**qa, "summary": qa_summary},
              "multi_turn": {**chat, "summary": chat_summary}}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
