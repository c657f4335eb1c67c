"""Command-line options shared by the ``lmx`` subcommands, and turning them into a pipeline factory."""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from .common import DEFAULT_MODEL, PipelineFactory, RopeSetting, engine_factory, rope_settings


class HelpFormatter(argparse.HelpFormatter):
    """Paragraphs (blank-line separated) wrapped one by one, indented lines kept as written; each option's
    default appended unless it is empty or the help already says it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        paragraphs = []
        for paragraph in textwrap.dedent(text).strip().split("\n\n"):
            if paragraph.startswith(" "):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))  # fmt: skip
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def parse_length(text: str) -> int:
    """``4096``, ``4k`` (= 4096) or ``1.5k`` (= 1536): a token count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a token count like 4096 or 4k, got {text!r}")
    value = float(match.group(1)) * (1024 if match.group(2) else 1)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive whole token count, got {text!r}")
    return int(value)


def _int_at_least(minimum: int, expected: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def _finite_float(minimum: float, *, inclusive: bool, expected: str):
    """An argparse type: a finite float (never inf or nan) >= (or >) ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


non_negative_float = _finite_float(0.0, inclusive=True, expected="a finite number >= 0")
positive_float = _finite_float(0.0, inclusive=False, expected="a finite number > 0")


def parse_size(text: str) -> int:
    """``1048576``, ``512k``, ``32M``, ``1G`` (powers of 1024): a size in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size in bytes like 1048576, 512k, 32M or 1G, got {text!r}")
    value = float(match.group(1)) * 1024 ** " kmg".index((match.group(2) or " ").lower())
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size in bytes, got {text!r}")
    return int(value)


def add_model_options(parser: argparse.ArgumentParser, *, session_len_help: str | None = None) -> None:
    group = parser.add_argument_group("model and engine")
    group.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"a Hugging Face directory, a .gguf file or '{DEFAULT_MODEL}' (the embedded SmolLM2, default)",
    )  # fmt: skip
    group.add_argument(
        "--session-len", type=parse_length, default=None,
        help=session_len_help or "longest sequence the engine accepts (default: the model's trained length, "
        "times the dynamic factor)",
    )  # fmt: skip
    group.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="compute dtype (auto: the checkpoint's on CUDA, float32 on a CPU)",
    )  # fmt: skip
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available")
    group.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    group.add_argument("--batch-size", type=positive_int, default=1, help="sequences in flight at once")


def add_rope_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("RoPE settings (several in one call are run one after the other)")
    group.add_argument(
        "--rope-scaling-factor", type=non_negative_float, nargs="+", default=None, metavar="F",
        help="LMDeploy's shortcut: F > 1 runs dynamic NTK with factor F, F <= 1 runs default RoPE; "
        "e.g. --rope-scaling-factor 1 2 compares default with dynamic 2.0",
    )  # fmt: skip
    group.add_argument(
        "--rope", nargs="+", default=None, metavar="SPEC",
        help="settings by name: default, dynamic:F, linear:F, yarn:F (e.g. --rope default dynamic:2 linear:2)",
    )  # fmt: skip


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed: the same seed gives the same run")
    parser.add_argument("--output", metavar="DIR", default=None, help="write JSON (and PNG) results to DIR")


def settings_from_args(args: argparse.Namespace) -> list[RopeSetting]:
    return rope_settings(getattr(args, "rope", None), getattr(args, "rope_scaling_factor", None))


def factory_from_args(args: argparse.Namespace, *, session_len: int | None) -> PipelineFactory:
    return engine_factory(
        args.model, session_len=session_len, max_batch_size=args.batch_size, dtype=args.dtype,
        device=args.device, num_threads=args.threads,
    )  # fmt: skip


def run_header(args: argparse.Namespace, command: str, **extra: Any) -> dict[str, Any]:
    """The ``config`` block of a result JSON: what was run, so a result file explains itself."""
    keys = ("model", "session_len", "dtype", "device", "seed")
    config = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    config.update(extra)
    return {"command": command, "config": config}
