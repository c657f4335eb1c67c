"""``lmx``: the command line. ``lmx --help`` lists the subcommands; ``lmx CMD --help`` explains one.

Each subcommand lives in its own module, which defines ``register(subparsers)``: it adds its parser and sets
``handler`` (``handler(args) -> int | None``). A new subcommand is one more module named in ``COMMAND_MODULES``.

User errors (``ValueError``, ``TypeError``, ``OSError``) end the command with one line on stderr and exit
status 1; argparse's usage errors exit 2; ``LMX_DEBUG=1`` shows the traceback instead.

The engine options of every front end (``lmx serve``, the evaluations, ``lmx generate``, lm-eval's model_args)
come from ``EngineConfig``'s fields and their metadata, once: ``add_engine_args(parser)`` adds them,
``engine_config_from_args(args)`` builds the ``EngineConfig``, ``parse_engine_value(name, text)`` reads one value
(lm-eval's model_args). ``--rope SPEC`` (``RopeSetting``) names an ``EngineConfig.rope_scaling``; the evaluations
take a list of settings (``--rope SPEC [SPEC ...]``, ``--rope-scaling-factor F [F ...]``), each meaning exactly
what the single option means for ``lmx serve``. This module imports neither torch nor FastAPI.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

COMMAND_MODULES = (
    "lmx.evals.passkey",
    "lmx.evals.niah",
    "lmx.evals.ppl",
    "lmx.evals.repeat",
    "lmx.evals.longbench",
    "lmx.evals.generate",  # generate, chat
    "lmx.evals.demo",
    "lmx.server.cli",  # serve
)


# -- option types ----------------------------------------------------------------------------------------------------


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


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("1", "true", "yes", "on")


# -- RoPE settings ---------------------------------------------------------------------------------------------------

ROPE_TYPES = ("model", "default", "dynamic", "linear", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeSetting:
    """One way of running the model's RoPE, as ``EngineConfig`` fields: ``model`` (the checkpoint's own RoPE, no
    override), ``default`` (plain RoPE whatever the checkpoint says), or a scaling type with a factor
    (``dynamic:2``: ``rope_scaling = {"rope_type": "dynamic", "factor": 2}``)."""

    rope_type: str = "model"
    factor: float = 1.0

    @property
    def name(self) -> str:
        return self.rope_type if self.rope_type in ("model", "default") else f"{self.rope_type}:{self.factor:g}"

    @property
    def rope_scaling(self) -> dict[str, Any] | None:
        """``EngineConfig.rope_scaling`` of this setting (``None``: the model's own)."""
        if self.rope_type == "model":
            return None
        if self.rope_type == "default":
            return {"rope_type": "default"}
        return {"rope_type": self.rope_type, "factor": self.factor}

    def engine_kwargs(self) -> dict[str, Any]:
        """``EngineConfig`` fields that select this setting."""
        return {} if self.rope_scaling is None else {"rope_scaling": self.rope_scaling}


def parse_rope_setting(text: str) -> RopeSetting:
    """``model`` | ``default`` | ``dynamic:2`` | ``linear:4`` | ``yarn:4``; a bare number ``F`` means what
    ``EngineConfig(rope_scaling_factor=F)`` (``--rope-scaling-factor F``) means: dynamic NTK with factor ``F`` when
    ``F > 1``, the model's own RoPE otherwise."""
    spec = text.strip().lower()
    try:
        number = float(spec)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"--rope-scaling-factor: expected a finite number >= 0, got {text!r}")
        return RopeSetting("dynamic", number) if number > 1 else RopeSetting()
    rope_type, _, factor_text = spec.partition(":")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"--rope: expected one of {', '.join(ROPE_TYPES)} (with ':FACTOR'), got {text!r}")
    if rope_type in ("model", "default"):
        if factor_text:
            raise ValueError(f"--rope: {rope_type!r} takes no factor, got {text!r}")
        return RopeSetting(rope_type)
    try:
        factor = float(factor_text) if factor_text else 2.0
    except ValueError:
        raise ValueError(f"--rope: expected a number after '{rope_type}:', got {text!r}") from None
    if not math.isfinite(factor) or factor < 1.0:
        raise ValueError(f"--rope: expected a finite factor >= 1 for {rope_type}, got {text!r}")
    return RopeSetting(rope_type, factor)


def rope_settings(specs: Sequence[str] | None, factors: Sequence[float] | None) -> list[RopeSetting]:
    """The settings asked for by ``--rope`` and ``--rope-scaling-factor`` (in that order, without repeats); none
    asked: the model's own RoPE."""
    settings = [parse_rope_setting(s) for s in specs or []]
    settings += [parse_rope_setting(str(f)) for f in factors or []]
    unique = list(dict.fromkeys(settings))
    return unique or [RopeSetting()]


def parse_rope_scaling(text: str) -> dict[str, Any] | None:
    """``--rope SPEC`` as ``EngineConfig.rope_scaling`` (``None``: the model's own RoPE)."""
    try:
        return parse_rope_setting(text).rope_scaling
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--rope: ")) from None


# -- engine options, from EngineConfig's fields -----------------------------------------------------------------------

_PARSERS = {
    "length": parse_length, "positive_int": positive_int, "non_negative_float": non_negative_float,
    "fraction": fraction, "choice": str, "bool": parse_bool, "rope": parse_rope_scaling,
}  # fmt: skip


def _engine_fields() -> list[dataclasses.Field]:
    from lmx.engine import EngineConfig

    return [f for f in dataclasses.fields(EngineConfig) if "cli" in f.metadata]


def engine_flag(name: str) -> str:
    """The command-line option of ``EngineConfig`` field ``name``."""
    field = next(f for f in _engine_fields() if f.name == name)
    return field.metadata["cli"]["flag"] or "--" + name.replace("_", "-")


def add_engine_args(parser: argparse.ArgumentParser, *, defaults: dict[str, Any] | None = None,
                    helps: dict[str, str] | None = None, exclude: Sequence[str] = (),
                    title: str = "engine") -> argparse._ArgumentGroup:  # fmt: skip
    """One option per ``EngineConfig`` field (help, type and choices from the field's metadata); ``defaults`` and
    ``helps`` replace a field's default and help for this front end, ``exclude`` leaves fields out (a front end
    that sets them itself)."""
    defaults, helps = defaults or {}, helps or {}
    group = parser.add_argument_group(title)
    added = []
    for field in _engine_fields():
        if field.name in exclude:
            continue
        added.append(field.name)
        cli = dict(field.metadata["cli"])
        kind, flag = cli.pop("kind"), cli.pop("flag") or "--" + field.name.replace("_", "-")
        default = defaults.get(field.name, field.default)
        cli["help"] = helps.get(field.name, cli["help"])
        if kind == "bool":
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                               help=cli.pop("help"), **cli)  # fmt: skip
            continue
        if kind in ("length", "positive_int"):
            cli.setdefault("metavar", "N")
        kwargs: dict[str, Any] = {"type": _PARSERS[kind], "default": default, "dest": field.name}
        group.add_argument(flag, **kwargs, **cli)
    parser.set_defaults(_engine_fields=tuple(added))  # what engine_config_from_args reads
    return group


def engine_config_from_args(args: argparse.Namespace, **overrides: Any):
    """The ``EngineConfig`` the parsed options of ``add_engine_args`` say (``overrides`` win)."""
    from lmx.engine import EngineConfig

    names = getattr(args, "_engine_fields", None)
    if names is None:
        raise TypeError("args: expected options parsed by a parser that add_engine_args set up")
    values = {name: getattr(args, name) for name in names}
    values.update(overrides)
    return EngineConfig(**values)


def parse_engine_value(name: str, value: Any) -> Any:
    """One ``EngineConfig`` field's value given as text (lm-eval's model_args): parsed as its option would be;
    ``none`` means ``None`` for a field whose default is ``None``. Non-text values pass through."""
    fields = {f.name: f for f in _engine_fields()}
    if name not in fields:
        raise TypeError(f"{name}: not an EngineConfig field; expected one of {', '.join(fields)}")
    if not isinstance(value, str):
        return value
    field = fields[name]
    if value.strip().lower() == "none" and field.default is None:
        return None
    try:
        return _PARSERS[field.metadata["cli"]["kind"]](value)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"{name}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmx",
        description="Long-context inference with lmx: evaluations (passkey, niah, ppl, repeat, longbench), "
        "trying a model by hand (generate, chat) and serving it (serve). The default model is the embedded "
        "SmolLM2-135M-Instruct.",
        epilog="Run 'lmx COMMAND --help' for the options of one command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        status = handler(args)
    except KeyboardInterrupt:
        print(f"lmx {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as e:
        if os.environ.get("LMX_DEBUG"):
            raise
        message = str(e) or type(e).__name__
        print(f"lmx {args.command}: error: {message}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
