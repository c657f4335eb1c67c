"""The repetition task of seed 003 (Together's long-context cookbook): "return the last n words".

Prompt: ``Return last {n} words from this text: \\n\\n{document}``; target: the document's last ``n`` words
(``" ".join(document.split()[-n:])``); ``n`` random in [1, 100) per document as in the seed, or fixed with ``--n``.
Scores: ``Levenshtein.ratio(target, response)`` (normalised Indel similarity) and the word-count difference,
per item and as means. A document longer than the session loses words at its start (its end, the target, stays).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from . import options, report
from .common import PipelineFactory, RopeSetting, each_setting, generate_batch, prompt_ids, read_text
from .metrics import levenshtein_ratio, word_count_difference

PROMPT = "Return last {n} words from this text: \n\n"
SYSTEM = "You are a helpful chatbot."  # the seed's system message


def make_task(document: str, n: int) -> tuple[str, str]:
    """``(prompt, target)`` of seed 003 for one document."""
    return PROMPT.format(n=n) + document, " ".join(document.split()[-n:])


def load_documents(paths: list[str]) -> list[tuple[str, str]]:
    """``(name, text)`` for each file; a directory contributes its ``*.txt`` and ``*.md`` files, sorted."""
    documents = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".md") and p.is_file())
            if not files:
                raise ValueError(f"--docs: expected .txt or .md files in the directory {raw!r}, found none")
            documents += [(str(f), read_text(f, what="--docs")) for f in files]
        else:
            documents.append((raw, read_text(raw, what="--docs")))
    return documents


def fit_document(pipe: Any, document: str, n: int, limit: int, chat: bool) -> tuple[str, list[int], int]:
    """Drop words from the document's start until its prompt has at most ``limit`` tokens.

    Returns ``(document, prompt ids, words dropped)``; the last ``n`` words always stay.
    """
    words = document.split()
    dropped = 0
    while True:
        prompt, _ = make_task(document, n)
        ids = prompt_ids(pipe, prompt, chat=chat, system=SYSTEM if chat else None)
        if len(ids) <= limit:
            return document, ids, dropped
        if len(words) - dropped <= n:
            raise ValueError(
                f"--session-len: the prompt for the last {n} words alone needs {len(ids)} tokens, more than {limit}"
            )
        # cut the excess share of words, at least one
        keep = len(words) - dropped
        drop = max(1, int(keep * (len(ids) - limit) / len(ids)) + 1)
        dropped = min(len(words) - n, dropped + drop)
        document = " ".join(words[dropped:])


def run_repeat(
    factory: PipelineFactory,
    settings: list[RopeSetting],
    documents: list[tuple[str, str]],
    *,
    n: int | None = None,
    max_n: int = 100,
    seed: int = 0,
    max_new_tokens: int | None = None,
    chat_template: bool = True,
    temperature: float = 0.0,
) -> dict[str, Any]:
    from lmx.engine import sampling_config

    rng = np.random.RandomState(seed)
    counts = [n if n else int(rng.randint(1, max_n)) for _ in documents]
    records: list[dict[str, Any]] = []
    summary = []
    bar = report.progress(len(settings) * len(documents), "repeat")
    try:
        for setting, pipe in each_setting(factory, settings):
            use_chat = chat_template and bool(getattr(pipe.tokenizer, "chat_template", None))
            scores, diffs = [], []
            tasks, batch, gens = [], [], []
            for (name, text), count in zip(documents, counts):
                new_tokens = max_new_tokens or 2 * count + 32
                limit = pipe.session_len - new_tokens if getattr(pipe, "session_len", None) else 10**9
                _, ids, dropped = fit_document(pipe, text, count, limit, use_chat)
                tasks.append((name, count, dropped, make_task(text, count)[1]))
                batch.append(ids)
                gens.append(sampling_config(max_new_tokens=new_tokens, temperature=temperature, random_seed=seed))
            bar.set_postfix_str(setting.name)
            texts, seconds = generate_batch(pipe, batch, gens, bar)
            for (name, count, dropped, target), ids, text in zip(tasks, batch, texts):
                response = text.strip()
                score, diff = levenshtein_ratio(target, response), word_count_difference(target, response)
                scores.append(score)
                diffs.append(diff)
                records.append({
                    "setting": setting.name, "document": name, "n": count, "prompt_tokens": len(ids),
                    "words_dropped": dropped, "target": target, "response": response, "score": score,
                    "word_count_difference": diff, "seconds": round(seconds, 3),
                })  # fmt: skip
            summary.append({
                "setting": setting.name, "documents": len(documents), "mean_score": float(np.mean(scores)),
                "mean_word_count_difference": float(np.mean(diffs)),
            })  # fmt: skip
    finally:
        bar.close()
    return {"summary": summary, "items": records}


def print_and_save(result: dict[str, Any], output: Any, header: dict[str, Any]) -> list:
    rows = [[r["setting"], Path(r["document"]).name, r["n"], r["prompt_tokens"], r["score"], r["word_count_difference"]]
            for r in result["items"]]  # fmt: skip
    headers = ["setting", "document", "n", "tokens", "ratio", "word diff"]
    report.print_table(headers, rows, title="Repetition task (seed 003)")
    print()
    rows = [[s["setting"], s["documents"], s["mean_score"], s["mean_word_count_difference"]] for s in result["summary"]]
    report.print_table(["setting", "documents", "mean ratio", "mean word diff"], rows)
    return [report.write_json(output, "repeat.json", {**header, **result})] if output is not None else []


# -- command line ----------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "repeat", help="the repetition task of seed 003: return the last n words of a document",
        description="Seed 003's repetition task on documents from text files: the prompt 'Return last {n} words "
        "from this text: \\n\\n{document}', scored with Levenshtein.ratio against the last n words and with the "
        "word-count difference.",
        epilog="example: lmx repeat --docs docs/ --n 20 --output out/",
        formatter_class=options.HelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--docs", nargs="+", required=True, metavar="PATH", help="text files or directories of .txt/.md"
    )
    parser.add_argument(
        "--n", type=options.positive_int, default=None, help="words to return (default: random in [1, --max-n))"
    )
    parser.add_argument(
        "--max-n", type=options.positive_int, default=100, help="n is drawn from [1, MAX_N) as in the seed"
    )
    parser.add_argument("--max-new-tokens", type=options.positive_int, default=None, help="default: 2n + 32")
    parser.add_argument(
        "--temperature", type=options.non_negative_float, default=0.0, help="0 = greedy (the seed samples at 1.0)"
    )
    parser.add_argument(
        "--chat-template", action=argparse.BooleanOptionalAction, default=True,
        help="send the seed's system + user messages through the model's chat template",
    )  # fmt: skip
    options.add_model_options(parser)
    options.add_rope_options(parser)
    options.add_common_options(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    if args.max_n < 2 and args.n is None:
        raise ValueError(f"--max-n: expected at least 2 (n is drawn from [1, max-n)), got {args.max_n}")
    if args.temperature < 0:
        raise ValueError(f"--temperature: expected >= 0, got {args.temperature}")
    documents = load_documents(args.docs)
    output = report.prepare_output(args.output)
    settings = options.settings_from_args(args)
    result = run_repeat(
        options.factory_from_args(args, session_len=args.session_len), settings, documents, n=args.n,
        max_n=args.max_n, seed=args.seed, max_new_tokens=args.max_new_tokens, chat_template=args.chat_template,
        temperature=args.temperature,
    )  # fmt: skip
    header = options.run_header(args, "repeat", docs=args.docs, settings=[s.name for s in settings])
    report.say_written(print_and_save(result, output, header))
    return 0
