"""Needle in a haystack: a grid of context lengths x needle depths, one score per cell, a heatmap.

The haystack is the noise sentences of seed 000 (``lmx/data/noise.txt``) by default or any text file, repeated
until it fills the context. The needle goes in at ``depth`` percent of the haystack (0 = first, 100 = last),
moved back to the nearest sentence end as in Greg Kamradt's test, and the question follows the haystack. A cell
scores 100 when every answer keyword is in the response (0 otherwise); the graded score is the best partial
match of the answer in the response (``rapidfuzz.fuzz.partial_ratio``, 0-100), so a nearly right answer shows.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import options, plots, report
from .common import (
    PipelineFactory,
    RopeSetting,
    check_lengths,
    data_path,
    each_setting,
    encode,
    generate_batch,
    prompt_ids,
    read_text,
    trained_length,
)  # fmt: skip

DEFAULT_NEEDLE = "The secret code of the vault is 7392815."
DEFAULT_QUESTION = "What is the secret code of the vault? The secret code of the vault is"
DEFAULT_ANSWER = "7392815"
DEFAULT_TEMPLATE = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.\n\n"
    "{context}\n\n{question}"
)
DEFAULT_DEPTHS = [0.0, 25.0, 50.0, 75.0, 100.0]


def default_haystack() -> str:
    return data_path("noise.txt").read_text(encoding="utf-8").strip()


def keyword_score(response: str, keywords: list[str]) -> float:
    """100 if every keyword occurs in the response (case-insensitive), else 0."""
    text = response.lower()
    return 100.0 if all(k.lower() in text for k in keywords) else 0.0


def graded_score(response: str, answer: str) -> float:
    """How well the answer appears in the response, 0-100: the best Indel similarity of the answer with any
    equally long piece of the response (``rapidfuzz.fuzz.partial_ratio``, case-insensitive)."""
    from rapidfuzz import fuzz

    if not response.strip():
        return 0.0
    return float(fuzz.partial_ratio(answer.lower(), response.lower()))


class Haystack:
    """Token-level haystack of one tokenizer: ``context(n_tokens, depth, needle)`` builds one cell's context."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = " ".join(text.split())  # one line: the needle's sentence boundary search works on ". "
        self.unit_tokens = max(1, len(encode(tokenizer, self.text)))
        self._ids: list[int] = []

    def _ids_at_least(self, n_tokens: int) -> list[int]:
        if len(self._ids) < n_tokens:
            repeats = n_tokens // self.unit_tokens + 2
            self._ids = encode(self.tokenizer, " ".join([self.text] * repeats))
        return self._ids[:n_tokens]

    def context(self, n_tokens: int, depth: float, needle: str) -> str:
        """``n_tokens`` of haystack with ``needle`` at ``depth`` percent, at the sentence end before that point."""
        ids = self._ids_at_least(n_tokens)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if depth >= 100:
            return text.rstrip() + " " + needle
        cut = len(self.tokenizer.decode(ids[: int(len(ids) * depth / 100)], skip_special_tokens=True))
        boundary = text.rfind(".", 0, cut)
        cut = boundary + 1 if boundary >= 0 else 0
        before, after = text[:cut].rstrip(), text[cut:].lstrip()
        return (before + " " + needle + " " + after).strip()


def build_prompt(template: str, context: str, question: str) -> str:
    return template.format(context=context, question=question)


def check_template(template: str) -> None:
    try:
        template.format(context="", question="")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"--prompt-template: expected only the fields {{context}} and {{question}}, got error {e}"
        ) from None
    if "{context}" not in template:
        raise ValueError(f"--prompt-template: expected a {{context}} field, got {template!r}")


def run_niah(
    factory: PipelineFactory,
    settings: list[RopeSetting],
    lengths: list[int],
    depths: list[float],
    *,
    haystack_text: str | None = None,
    needle: str = DEFAULT_NEEDLE,
    question: str = DEFAULT_QUESTION,
    answer: str = DEFAULT_ANSWER,
    keywords: list[str] | None = None,
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 24,
    chat_template: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Score every (setting, length, depth); ``grids[setting]`` is ``[depth][length]`` of keyword scores."""
    from lmx.engine import GenerationConfig

    check_template(template)
    keywords = keywords or [answer]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, random_seed=seed)
    records: list[dict[str, Any]] = []
    grids: dict[str, list[list[float]]] = {}
    graded: dict[str, list[list[float]]] = {}
    trained = None
    bar = report.progress(len(settings) * len(lengths) * len(depths), "niah")
    try:
        for setting, pipe in each_setting(factory, settings):
            trained = trained or trained_length(pipe)
            hay = Haystack(pipe.tokenizer, haystack_text or default_haystack())
            overhead = len(prompt_ids(pipe, build_prompt(template, "", question), chat=chat_template))
            needle_tokens = len(encode(pipe.tokenizer, " " + needle + " "))
            grid = [[0.0] * len(lengths) for _ in depths]
            grade = [[0.0] * len(lengths) for _ in depths]
            cells, batch = [], []
            for j, length in enumerate(lengths):
                budget = length - overhead - needle_tokens
                if budget < 16:
                    raise ValueError(
                        f"--lengths: {length} tokens leave no room for a haystack (the prompt needs {overhead})"
                    )
                for i, depth in enumerate(depths):
                    prompt = build_prompt(template, hay.context(budget, depth, needle), question)
                    ids = prompt_ids(pipe, prompt, chat=chat_template)
                    if getattr(pipe, "session_len", None) is not None and len(ids) >= pipe.session_len:
                        raise ValueError(
                            f"--session-len: the {length}-token cell's prompt has {len(ids)} tokens, the session holds "
                            f"{pipe.session_len}; raise --session-len"
                        )
                    cells.append((i, j, length, depth))
                    batch.append(ids)
            bar.set_postfix_str(setting.name)
            texts, seconds = generate_batch(pipe, batch, gen, bar)
            for (i, j, length, depth), ids, text in zip(cells, batch, texts):
                grid[i][j] = keyword_score(text, keywords)
                grade[i][j] = graded_score(text, answer)
                records.append({
                    "setting": setting.name, "length": length, "depth": depth, "prompt_tokens": len(ids),
                    "response": text, "score": grid[i][j], "graded": grade[i][j], "seconds": round(seconds, 3),
                })  # fmt: skip
            grids[setting.name], graded[setting.name] = grid, grade
    finally:
        bar.close()
    return {
        "lengths": lengths, "depths": depths, "grids": grids, "graded_grids": graded,
        "mean_per_length": {s: _column_means(g) for s, g in grids.items()},
        "mean": {s: _mean(g) for s, g in grids.items()},
        "items": records, "trained_length": trained,
    }  # fmt: skip


def _column_means(grid: list[list[float]]) -> list[float]:
    return [sum(col) / len(col) for col in zip(*grid)]


def _mean(grid: list[list[float]]) -> float:
    cells = [v for row in grid for v in row]
    return sum(cells) / len(cells)


def print_and_save(result: dict[str, Any], output: Any, header: dict[str, Any]) -> list:
    lengths, depths = result["lengths"], result["depths"]
    written = []
    for setting, grid in result["grids"].items():
        rows = [[f"{d:g}%"] + row for d, row in zip(depths, grid)]
        rows.append(["mean"] + result["mean_per_length"][setting])
        mean = result["mean"][setting]
        title = f"Needle in a haystack, {setting} RoPE: keyword score (0-100), depth x length; mean {mean:.1f}"
        report.print_table(["depth"] + [str(n) for n in lengths], rows, title=title)
        if output is not None:
            name = "niah.png" if len(result["grids"]) == 1 else f"niah_{setting.replace(':', '_')}.png"
            title = f"Needle in a haystack, {setting}"
            written.append(plots.niah_heatmap(grid, lengths, depths, output / name, title=title))
    if output is not None:
        written.insert(0, report.write_json(output, "niah.json", {**header, **result}))
    return written


# -- command line ----------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "niah", help="needle in a haystack: lengths x depths grid, JSON and heatmap",
        description="Needle in a haystack over a grid of context lengths x needle depths (0-100%). The haystack is "
        "the noise sentences of seed 000 or --haystack FILE (repeated to fill the context). Each cell scores 100 "
        "when the answer keyword(s) appear in the response, else 0; a graded score (best partial match) is kept too.",
        epilog="example: lmx niah --lengths 2k 4k 8k --depths 0 50 100 --output out/",
        formatter_class=options.HelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--lengths", type=options.parse_length, nargs="+", default=[1024, 2048, 4096, 8192], metavar="N",
        help="context lengths in tokens (4k = 4096)",
    )  # fmt: skip
    parser.add_argument(
        "--depths",
        type=options.non_negative_float,
        nargs="+",
        default=DEFAULT_DEPTHS,
        metavar="PCT",
        help="needle depths in percent",
    )
    parser.add_argument(
        "--haystack", metavar="FILE", default=None, help="a UTF-8 text file (default: the noise sentences)"
    )
    parser.add_argument("--needle", default=DEFAULT_NEEDLE, help="the sentence hidden in the haystack")
    parser.add_argument(
        "--question", default=DEFAULT_QUESTION, help="asked after the haystack (may end with an answer prefix)"
    )
    parser.add_argument("--answer", default=DEFAULT_ANSWER, help="the expected answer (for the graded score)")
    parser.add_argument("--keywords", nargs="+", default=None, help="words that must all appear (default: the answer)")
    parser.add_argument("--prompt-template", default=DEFAULT_TEMPLATE, help="with {context} and {question}")
    parser.add_argument("--max-new-tokens", type=options.positive_int, default=24, help="tokens to generate per cell")
    parser.add_argument("--chat-template", action="store_true", help="wrap the prompt in the model's chat template")
    options.add_model_options(parser, session_len_help="default: the longest length + max new tokens + 64")
    options.add_rope_options(parser)
    options.add_common_options(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    session_len = args.session_len or max(args.lengths) + args.max_new_tokens + 64
    check_lengths(args.lengths, session_len)
    bad = [d for d in args.depths if not 0 <= d <= 100]
    if bad:
        raise ValueError(f"--depths: expected percents from 0 to 100, got {bad}")
    check_template(args.prompt_template)
    haystack = read_text(args.haystack, what="--haystack") if args.haystack else None
    output = report.prepare_output(args.output)
    settings = options.settings_from_args(args)
    result = run_niah(
        options.factory_from_args(args, session_len=session_len), settings, args.lengths, args.depths,
        haystack_text=haystack, needle=args.needle, question=args.question, answer=args.answer,
        keywords=args.keywords, template=args.prompt_template, max_new_tokens=args.max_new_tokens,
        chat_template=args.chat_template, seed=args.seed,
    )  # fmt: skip
    header = options.run_header(
        args, "niah", session_len=session_len, haystack=args.haystack or "noise sentences (seed 000)",
        needle=args.needle, question=args.question, answer=args.answer, settings=[s.name for s in settings],
    )  # fmt: skip
    report.say_written(print_and_save(result, output, header))
    return 0
