"""Command-line options of the evaluation subcommands, and turning them into a pipeline factory.

The engine options are ``lmx.cli.add_engine_args``'s (built from ``EngineConfig``, the same as ``lmx serve``'s);
the RoPE options are lists of settings, each meaning what the single option means for ``lmx serve``.
"""

from __future__ import annotations

import argparse
from typing import Any

from lmx.cli import (  # noqa: F401 - the option types, re-exported for the evaluation modules
    HelpFormatter,
    add_engine_args,
    engine_config_from_args,
    non_negative_float,
    non_negative_int,
    parse_length,
    parse_size,
    positive_float,
    positive_int,
)  # fmt: skip

from .common import DEFAULT_MODEL, PipelineFactory, RopeSetting, engine_factory, rope_settings

EVAL_MAX_BATCH_SIZE = 4  # each setting's prompts run as one batch, this many at once (the KV cache is sized for it)


def add_model_options(parser: argparse.ArgumentParser, *, session_len_help: str | None = None) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"a Hugging Face directory, a .gguf file or '{DEFAULT_MODEL}' (the embedded SmolLM2, default)",
    )  # fmt: skip
    helps = {"session_len": session_len_help} if session_len_help else {}
    add_engine_args(parser, title="model and engine", defaults={"max_batch_size": EVAL_MAX_BATCH_SIZE}, helps=helps,
                    exclude=("rope_scaling_factor", "rope_scaling"))  # fmt: skip


def add_rope_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("RoPE settings (several in one call are run one after the other)")
    group.add_argument(
        "--rope-scaling-factor", type=non_negative_float, nargs="+", default=None, metavar="F",
        help="each F as 'lmx serve --rope-scaling-factor F': F > 1 runs dynamic NTK with factor F, F <= 1 the "
        "model's own RoPE; e.g. --rope-scaling-factor 1 2 compares the model's RoPE with dynamic 2.0",
    )  # fmt: skip
    group.add_argument(
        "--rope", nargs="+", default=None, metavar="SPEC",
        help="settings by name, each as 'lmx serve --rope SPEC': model (the checkpoint's RoPE), default (plain "
        "RoPE), dynamic:F, linear:F, yarn:F (e.g. --rope default dynamic:2 linear:2)",
    )  # fmt: skip


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed: the same seed gives the same run"
    )
    parser.add_argument("--output", metavar="DIR", default=None, help="write JSON (and PNG) results to DIR")


def settings_from_args(args: argparse.Namespace) -> list[RopeSetting]:
    return rope_settings(getattr(args, "rope", None), getattr(args, "rope_scaling_factor", None))


def factory_from_args(args: argparse.Namespace, *, session_len: int | None) -> PipelineFactory:
    """Pipelines of ``args.model`` with the engine options of ``args`` (``session_len`` as the command decided)."""
    return engine_factory(args.model, engine_config_from_args(args, session_len=session_len))


def run_header(args: argparse.Namespace, command: str, **extra: Any) -> dict[str, Any]:
    """The ``config`` block of a result JSON: what was run, so a result file explains itself."""
    keys = ("model", "session_len", "dtype", "device", "seed")
    config = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    config.update(extra)
    return {"command": command, "config": config}
