"""``lmx generate`` and ``lmx chat``: try a model by hand, with the sampling options of ``GenerationConfig``.

Text streams to stdout as it is generated; the token counts and speed go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from . import options
from .common import read_text


def _add_sampling_options(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    group = parser.add_argument_group("sampling (greedy at --temperature 0; a temperature > 0 samples)")
    group.add_argument(
        "--max-new-tokens", type=options.positive_int, default=max_new_tokens, help="most tokens to generate"
    )
    group.add_argument("--temperature", type=options.non_negative_float, default=0.0, help="0 = greedy, > 0 samples")
    group.add_argument(
        "--top-p", type=options.positive_float, default=1.0, help="nucleus sampling mass when sampling (1.0 = off)"
    )
    group.add_argument("--top-k", type=options.non_negative_int, default=0, help="top-k cut when sampling (0 = off)")
    group.add_argument(
        "--repetition-penalty", type=options.positive_float, default=1.0, help="1.0 = off (seed 002 suggests 1.02)"
    )
    group.add_argument("--stop", nargs="+", default=None, metavar="TEXT", help="stop words")
    group.add_argument("--seed", type=options.non_negative_int, default=0, help="sampling seed")


def gen_config_from_args(args: argparse.Namespace):
    from lmx.engine import sampling_config

    return sampling_config(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, stop_words=args.stop, random_seed=args.seed,
    )  # fmt: skip


def _pipeline(args: argparse.Namespace):
    settings = options.settings_from_args(args)
    if len(settings) > 1:
        names = [s.name for s in settings]
        raise ValueError(f"--rope: generate and chat run one setting, got {len(settings)}: {names}")
    return options.factory_from_args(args, session_len=args.session_len)(settings[0])


def stream(pipe: Any, prompt: Any, gen: Any, *, chat: bool) -> tuple[str, int, int, float]:
    """Print the reply as it comes; returns ``(text, prompt tokens, new tokens, seconds)``."""
    start = time.perf_counter()
    pieces, new_tokens, prompt_tokens = [], 0, 0
    for delta in pipe.stream_infer(prompt, gen_config=gen, do_preprocess=chat):
        sys.stdout.write(delta.text)
        sys.stdout.flush()
        pieces.append(delta.text)
        new_tokens, prompt_tokens = delta.generate_token_len, delta.input_token_len
    sys.stdout.write("\n")
    return "".join(pieces), prompt_tokens, new_tokens, time.perf_counter() - start


def _stats(prompt_tokens: int, new_tokens: int, seconds: float) -> None:
    rate = new_tokens / seconds if seconds > 0 else 0.0
    stats = f"[{prompt_tokens} prompt tokens, {new_tokens} new tokens, {seconds:.1f} s, {rate:.1f} tok/s]"
    print(stats, file=sys.stderr)


# -- generate --------------------------------------------------------------------------------------------------------


def main_generate(args: argparse.Namespace) -> int:
    if args.file is not None and args.prompt is not None:
        raise ValueError("prompt: give PROMPT or --file, not both")
    if args.file is not None:
        prompt = sys.stdin.read() if args.file == "-" else read_text(args.file, what="--file")
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        raise ValueError("prompt: expected PROMPT or --file FILE, got neither")
    if not prompt.strip():
        raise ValueError("prompt: expected some text, got an empty prompt")
    gen = gen_config_from_args(args)
    pipe = _pipeline(args)
    _ = pipe.tokenizer  # loaded lazily (a GGUF's takes seconds): not part of the generation time
    _, prompt_tokens, new_tokens, seconds = stream(pipe, prompt, gen, chat=args.chat_template)
    _stats(prompt_tokens, new_tokens, seconds)
    return 0


# -- chat ------------------------------------------------------------------------------------------------------------


def main_chat(args: argparse.Namespace) -> int:
    gen = gen_config_from_args(args)
    pipe = _pipeline(args)
    if not getattr(pipe.tokenizer, "chat_template", None):
        raise ValueError(f"--model: {args.model!r} has no chat template; use 'lmx generate'")
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("lmx chat: /reset clears the conversation, /exit (or Ctrl-D) quits.", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": text})
        reply, prompt_tokens, new_tokens, seconds = stream(pipe, list(history), gen, chat=True)
        history.append({"role": "assistant", "content": reply})
        if args.verbose:
            _stats(prompt_tokens, new_tokens, seconds)
    return 0


# -- command line ----------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate a completion for one prompt (streams to stdout)",
        description="Generate a completion for PROMPT (or the text of --file; '-' reads stdin), streaming it to "
        "stdout. Greedy by default; --temperature > 0 samples (with --top-p/--top-k), reproducibly with --seed.",
        epilog="example: lmx generate 'The capital of France is' --max-new-tokens 16",
        formatter_class=options.HelpFormatter,
    )  # fmt: skip
    parser.add_argument("prompt", nargs="?", default=None, help="the prompt text")
    parser.add_argument("--file", default=None, help="read the prompt from a text file ('-' = stdin)")
    parser.add_argument("--chat-template", action="store_true", help="wrap the prompt in the model's chat template")
    _add_sampling_options(parser, max_new_tokens=128)
    options.add_model_options(parser)
    options.add_rope_options(parser)
    parser.set_defaults(handler=main_generate)

    parser = subparsers.add_parser(
        "chat", help="chat with a model in the terminal (chat template, history)",
        description="A terminal chat through the model's chat template: one message per line; /reset clears the "
        "history, /exit or Ctrl-D quits. Reads stdin, so it also works from a pipe.",
        formatter_class=options.HelpFormatter,
    )  # fmt: skip
    parser.add_argument("--system", default=None, help="a system message")
    parser.add_argument("--verbose", action="store_true", help="print token counts and speed after each reply")
    _add_sampling_options(parser, max_new_tokens=256)
    options.add_model_options(parser)
    options.add_rope_options(parser)
    parser.set_defaults(handler=main_chat)
