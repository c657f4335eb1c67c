"""``lmx``: the command line. ``lmx --help`` lists the subcommands; ``lmx CMD --help`` explains one.

Each subcommand lives in its own module, which defines ``register(subparsers)``: it adds its parser and sets
``handler`` (``handler(args) -> int | None``). A new subcommand is one more module named in ``COMMAND_MODULES``.

User errors (``ValueError``, ``TypeError``, ``OSError``) end the command with one line on stderr and exit
status 1; argparse's usage errors exit 2; ``LMX_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

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
