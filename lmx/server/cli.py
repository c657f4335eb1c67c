"""``lmx serve``, as ``lmx/cli.py`` finds its subcommands: ``register(subparsers)`` (see ``lmx.serve_cli``)."""

from lmx.serve_cli import add_serve_parser as register

__all__ = ["register"]
