"""Perplexity against context length for several RoPE settings (the classic long-context picture).

For each length ``L`` the first ``L`` tokens of the text are scored with ``pipe.get_ppl`` (mean cross-entropy
over the ``L - 1`` predicted tokens); perplexity is its ``exp``. Past the trained length default RoPE explodes,
linear interpolation degrades a little everywhere, dynamic NTK stays flat.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import time
from typing import Any

from . import options, plots, report
from .common import PipelineFactory, RopeSetting, check_lengths, each_setting, encode, read_text, trained_length

DEFAULT_SETTINGS = ["default", "linear:2", "dynamic:2"]
# Prose that is on every machine with Python: standard-library docstrings, in a fixed order.
_DOC_MODULES = (
    "argparse",
    "collections",
    "json",
    "logging",
    "pathlib",
    "subprocess",
    "threading",
    "asyncio",
    "email",
    "http.client",
    "unittest",
    "typing",
    "datetime",
    "decimal",
    "fractions",
    "random",
    "statistics",
    "textwrap",
    "string",
    "re",
    "functools",
    "itertools",
    "dataclasses",
    "enum",
    "contextlib",
    "heapq",
    "bisect",
    "shutil",
    "tempfile",
    "zipfile",
    "tarfile",
    "csv",
    "sqlite3",
    "socket",
    "ssl",
    "urllib.request",
    "xml.dom.minidom",
    "difflib",
    "pickle",
    "copy",
    "inspect",
    "ast",
    "tokenize",
    "doctest",
    "pdb",
    "calendar",
    "locale",
    "gettext",
)


def default_text() -> str:
    """A long English text available offline: the docstrings of standard-library modules and their members."""
    pieces: list[str] = []
    for name in _DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module)]
        for _, member in sorted(vars(module).items()):
            if (inspect.isclass(member) or inspect.isfunction(member)) and getattr(member, "__module__", "") == name:
                docs.append(inspect.getdoc(member))
        pieces += [d for d in docs if d and len(d) > 80]
    return "\n\n".join(pieces)


def run_ppl(
    factory: PipelineFactory,
    settings: list[RopeSetting],
    lengths: list[int],
    text: str,
) -> dict[str, Any]:
    """``curves[setting][length] = ppl`` plus per-point records; every setting scores the same token prefixes."""
    records: list[dict[str, Any]] = []
    curves: dict[str, dict[int, float]] = {}
    trained = None
    ids: list[int] | None = None
    bar = report.progress(len(settings) * len(lengths), "ppl")
    try:
        for setting, pipe in each_setting(factory, settings):
            trained = trained or trained_length(pipe)
            if ids is None:
                ids = encode(pipe.tokenizer, text)
                if len(ids) < max(lengths):
                    raise ValueError(
                        f"--text: the text has {len(ids)} tokens, fewer than the longest length {max(lengths)}; "
                        "give a longer text or shorter --lengths"
                    )
            curves[setting.name] = {}
            bar.set_postfix_str(setting.name)
            start = time.perf_counter()
            nlls = pipe.get_ppl([ids[:length] for length in lengths])  # one batch per setting
            seconds = (time.perf_counter() - start) / len(lengths)
            bar.update(len(lengths))
            for length, nll in zip(lengths, map(float, nlls)):
                ppl = math.exp(nll) if nll < 700 else math.inf
                curves[setting.name][length] = ppl
                records.append({
                    "setting": setting.name, "length": length, "nll": nll, "ppl": ppl, "seconds": round(seconds, 3),
                })  # fmt: skip
    finally:
        bar.close()
    return {"lengths": lengths, "curves": curves, "items": records, "trained_length": trained}


def print_and_save(result: dict[str, Any], output: Any, header: dict[str, Any]) -> list:
    curves, lengths = result["curves"], result["lengths"]
    rows = [[n] + [curves[s][n] for s in curves] for n in lengths]
    trained = result.get("trained_length")
    title = "Perplexity vs context length" + (f"; trained context {trained} tokens" if trained else "")
    report.print_table(["length"] + list(curves), rows, title=title)
    written = []
    if output is not None:
        written.append(report.write_json(output, "ppl.json", {**header, **result}))
        written.append(plots.ppl_curves(curves, output / "ppl.png", trained_length=trained))
    return written


# -- command line ----------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ppl", help="perplexity vs context length for several RoPE settings; table, JSON, plot",
        description="Perplexity of the first N tokens of a text for each length N and RoPE setting. Without --rope "
        f"or --rope-scaling-factor it compares {', '.join(DEFAULT_SETTINGS)}.",
        epilog="example: lmx ppl --text book.txt --lengths 1k 2k 4k 8k 16k --output out/",
        formatter_class=options.HelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--text", metavar="FILE", default=None,
        help="a UTF-8 text file (default: Python standard-library docstrings, about 100k tokens)",
    )  # fmt: skip
    parser.add_argument(
        "--lengths",
        type=options.parse_length,
        nargs="+",
        default=[1024, 2048, 4096, 8192, 16384],
        metavar="N",
        help="context lengths in tokens (4k = 4096): the first N tokens of the text are scored",
    )
    options.add_model_options(parser, session_len_help="default: the longest length")
    options.add_rope_options(parser)
    options.add_common_options(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    session_len = args.session_len or max(args.lengths)
    check_lengths(args.lengths, session_len)
    if min(args.lengths) < 2:
        raise ValueError(f"--lengths: perplexity needs at least 2 tokens, got {min(args.lengths)}")
    text = read_text(args.text, what="--text") if args.text else default_text()
    output = report.prepare_output(args.output)
    if not (args.rope or args.rope_scaling_factor):
        args.rope = DEFAULT_SETTINGS
    settings = options.settings_from_args(args)
    result = run_ppl(options.factory_from_args(args, session_len=session_len), settings, args.lengths, text)
    header = options.run_header(
        args, "ppl", session_len=session_len, text=args.text or "python stdlib docstrings",
        settings=[s.name for s in settings],
    )  # fmt: skip
    report.say_written(print_and_save(result, output, header))
    return 0
