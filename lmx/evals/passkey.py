"""Passkey retrieval with the exact prompt of seed 000 (LMDeploy's long-context guide).

A pass key hides at a random depth in repeated garbage sentences; the model must complete
``What is the pass key? The pass key is``. The same prompts run under every RoPE setting, so one table shows what
context extension does: default RoPE fails past the trained length, dynamic NTK keeps finding the key.

    from lmx.evals.passkey import run_passkey
    result = run_passkey(factory, settings, lengths=[4096, 15360], rounds=3, seed=0)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

import numpy as np

from . import options, plots, report
from .common import (
    PipelineFactory,
    RopeSetting,
    check_lengths,
    each_setting,
    encode,
    generate_batch,
    prompt_ids,
    trained_length,
)  # fmt: skip

# Seed 000, verbatim.
TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
INFORMATION_LINE = "The pass key is {pass_key}. Remember it. {pass_key} is the pass key."
FINAL_QUESTION = "What is the pass key? The pass key is"
MAX_PASS_KEY = 50000  # the seed draws np.random.randint(1, 50000)


def passkey_prompt(n_garbage_prefix: int, n_garbage_suffix: int, pass_key: int) -> str:
    """Seed 000's prompt: task, garbage, the information line, garbage, question, joined by single spaces."""
    lines = [
        TASK_DESCRIPTION,
        " ".join([GARBAGE] * n_garbage_prefix),
        INFORMATION_LINE.format(pass_key=pass_key),
        " ".join([GARBAGE] * n_garbage_suffix),
        FINAL_QUESTION,
    ]
    return " ".join(lines)


@dataclasses.dataclass
class PasskeyItem:
    length: int  # the asked-for prompt length in tokens
    round: int
    pass_key: int
    n_garbage_prefix: int
    n_garbage_suffix: int

    @property
    def prompt(self) -> str:
        return passkey_prompt(self.n_garbage_prefix, self.n_garbage_suffix, self.pass_key)

    @property
    def depth(self) -> float:
        """Where the key sits, as a fraction of the garbage before it (0 = start, 1 = end)."""
        total = self.n_garbage_prefix + self.n_garbage_suffix
        return self.n_garbage_prefix / total if total else 0.0


def garbage_repeats(tokenizer: Any, length: int) -> int:
    """How many garbage sentences fill a prompt of about ``length`` tokens.

    The seed sizes its prompt as ``(session_len - 1000) // len(tok.encode(garbage))``; here the prompt's other
    parts are measured instead, so ``length`` is the prompt's length (the table shows the exact count).
    """
    overhead = len(encode(tokenizer, passkey_prompt(0, 0, MAX_PASS_KEY - 1)))
    per_repeat = len(encode(tokenizer, " ".join([GARBAGE] * 16))) / 16
    repeats = int((length - overhead) / per_repeat)
    if repeats < 2:
        raise ValueError(f"--lengths: {length} tokens is too short for the passkey prompt (needs > {overhead + 50})")
    return repeats


def make_items(tokenizer: Any, lengths: list[int], rounds: int, seed: int) -> list[PasskeyItem]:
    """The prompts of a run: per length, ``rounds`` random depths and keys (reproducible from ``seed``)."""
    rng = np.random.RandomState(seed)
    items = []
    for length in lengths:
        n_times = garbage_repeats(tokenizer, length)
        for r in range(rounds):
            n_prefix = int(rng.randint(0, n_times))  # as the seed: prefix in [0, n_times)
            pass_key = int(rng.randint(1, MAX_PASS_KEY))
            items.append(PasskeyItem(length, r, pass_key, n_prefix, n_times - n_prefix))
    return items


def extract_pass_key(response: str) -> int | None:
    """The first whole number in the response (the model should answer with the key), or None."""
    match = re.search(r"\d+", response)
    return int(match.group()) if match else None


def run_passkey(
    factory: PipelineFactory,
    settings: list[RopeSetting],
    lengths: list[int],
    *,
    rounds: int = 3,
    seed: int = 0,
    max_new_tokens: int = 16,
    chat_template: bool = False,
) -> dict[str, Any]:
    """Run every (setting, length, round); returns ``{"summary": [...], "items": [...], "trained_length": ...}``."""
    from lmx.engine import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, random_seed=seed)
    items: list[PasskeyItem] | None = None
    records: list[dict[str, Any]] = []
    trained = None
    bar = report.progress(len(settings) * len(lengths) * rounds, "passkey")
    try:
        for setting, pipe in each_setting(factory, settings):
            trained = trained or trained_length(pipe)
            if items is None:  # the same prompts for every setting
                items = make_items(pipe.tokenizer, lengths, rounds, seed)
            bar.set_postfix_str(setting.name)
            batch = [prompt_ids(pipe, item.prompt, chat=chat_template) for item in items]
            for ids in batch:
                _check_fits(pipe, len(ids), max_new_tokens)
            texts, seconds = generate_batch(pipe, batch, gen, bar)
            for item, ids, text in zip(items, batch, texts):
                answer = extract_pass_key(text)
                records.append({
                    "setting": setting.name, "length": item.length, "round": item.round,
                    "prompt_tokens": len(ids), "pass_key": item.pass_key, "depth": round(item.depth, 4),
                    "response": text, "answer": answer, "correct": answer == item.pass_key,
                    "seconds": round(seconds, 3),
                })  # fmt: skip
    finally:
        bar.close()
    return {"summary": summarize(records), "items": records, "trained_length": trained}


def _check_fits(pipe: Any, prompt_tokens: int, max_new_tokens: int) -> None:
    session_len = getattr(pipe, "session_len", None)
    if session_len is not None and prompt_tokens >= session_len:
        raise ValueError(
            f"--session-len: the prompt has {prompt_tokens} tokens but the session holds {session_len}; "
            f"raise --session-len to at least {prompt_tokens + max_new_tokens}"
        )


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy per (setting, length), in the order first seen."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["setting"], rec["length"]), []).append(rec)
    out = []
    for (setting, length), recs in groups.items():
        correct = sum(r["correct"] for r in recs)
        out.append({
            "setting": setting, "length": length, "correct": correct, "rounds": len(recs),
            "accuracy": 100.0 * correct / len(recs),
            "prompt_tokens": int(round(sum(r["prompt_tokens"] for r in recs) / len(recs))),
        })  # fmt: skip
    return out


def table_rows(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per length, one column per setting: ``2/3 (67%)``."""
    settings = list(dict.fromkeys(s["setting"] for s in summary))
    lengths = list(dict.fromkeys(s["length"] for s in summary))
    cell = {(s["setting"], s["length"]): s for s in summary}
    rows = []
    for length in lengths:
        tokens = next(cell[(s, length)]["prompt_tokens"] for s in settings if (s, length) in cell)
        row: list[Any] = [length, tokens]
        for s in settings:
            c = cell.get((s, length))
            row.append(f"{c['correct']}/{c['rounds']} ({c['accuracy']:.0f}%)" if c else "-")
        rows.append(row)
    return ["length", "prompt tokens"] + settings, rows


def print_and_save(result: dict[str, Any], output: Any, header: dict[str, Any]) -> list:
    headers, rows = table_rows(result["summary"])
    trained = result.get("trained_length")
    title = "Passkey retrieval (seed 000 prompt)" + (f"; trained context {trained} tokens" if trained else "")
    report.print_table(headers, rows, title=title)
    written = []
    if output is not None:
        written.append(report.write_json(output, "passkey.json", {**header, **result}))
        curves: dict[str, dict[int, float]] = {}
        for s in result["summary"]:
            curves.setdefault(s["setting"], {})[s["prompt_tokens"]] = s["accuracy"]
        written.append(plots.accuracy_curves(curves, output / "passkey.png", trained_length=trained))
    return written


# -- command line ----------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "passkey", help="passkey retrieval (seed 000) at several lengths and RoPE settings",
        description="Passkey retrieval with the exact prompt of LMDeploy's long-context guide (seed 000): a pass "
        "key hidden at a random depth in garbage text. Every RoPE setting sees the same prompts; the table shows "
        "accuracy per length and setting.",
        epilog="example: lmx passkey --lengths 4k 15k --rounds 3 --rope-scaling-factor 1 2 --output out/",
        formatter_class=options.HelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--lengths", type=options.parse_length, nargs="+", default=[4096, 15360], metavar="N",
        help="prompt lengths in tokens (4k = 4096)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=options.positive_int, default=3, help="prompts per length")
    parser.add_argument("--max-new-tokens", type=options.positive_int, default=16, help="tokens to generate per answer")
    parser.add_argument(
        "--chat-template", action="store_true",
        help="wrap the prompt in the model's chat template (LMDeploy's pipeline does; default: the raw prompt)",
    )  # fmt: skip
    options.add_model_options(parser, session_len_help="default: the longest length + max new tokens + 64")
    options.add_rope_options(parser)
    options.add_common_options(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    session_len = args.session_len or max(args.lengths) + args.max_new_tokens + 64
    check_lengths(args.lengths, session_len)
    settings = options.settings_from_args(args)
    output = report.prepare_output(args.output)
    result = run_passkey(
        options.factory_from_args(args, session_len=session_len), settings, args.lengths,
        rounds=args.rounds, seed=args.seed, max_new_tokens=args.max_new_tokens, chat_template=args.chat_template,
    )  # fmt: skip
    header = options.run_header(
        args, "passkey", session_len=session_len, lengths=args.lengths, rounds=args.rounds,
        settings=[s.name for s in settings], chat_template=args.chat_template,
    )  # fmt: skip
    report.say_written(print_and_save(result, output, header))
    return 0
