"""``lmx serve MODEL``: the OpenAI-compatible server and document-chat page on FastAPI + uvicorn.

``register(subparsers)`` adds the subcommand (as ``lmx/cli.py`` finds its subcommands; the handler is
``run_serve``); ``main(argv)`` runs it alone (``python -m lmx.server MODEL ...``). Importing this module needs
neither FastAPI nor torch, so ``--help`` always works.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from lmx.cli import HelpFormatter, add_engine_args, engine_config_from_args, parse_size, positive_float, positive_int

DEFAULT_MODEL = "smollm2-135m"
MiB = 1024 * 1024
CHARS_PER_TOKEN = 16  # = lmx.server.guards.CHARS_PER_TOKEN (not imported: --help must not need FastAPI)


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"a Hugging Face directory, a .gguf file or '{DEFAULT_MODEL}' (the embedded SmolLM2, "
                        "default)")  # fmt: skip
    parser.add_argument("--model-name", default=None, help="the name clients send as 'model' (default: MODEL's name)")
    add_engine_args(
        parser,
        defaults={"max_queued_requests": 256},
        helps={"max_queued_requests": "most requests waiting for a place in the batch; more get 503 with Retry-After"},
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", "--server-port", type=_port, default=23333, help="port (default 23333)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LMX_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $LMX_API_KEY, else no key)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    security = parser.add_argument_group("who may call the server")
    security.add_argument("--allowed-hosts", nargs="+", default=[], metavar="NAME",
                          help="names besides the bound address and localhost that the Host header may carry (for a "
                          "server reached by a DNS name; '*' allows any); other hosts get 421, which stops DNS "
                          "rebinding")  # fmt: skip
    security.add_argument("--allowed-origins", nargs="+", default=[], metavar="ORIGIN",
                          help="web origins (e.g. http://localhost:3000) whose pages may call the API, with CORS "
                          "headers for them; by default only the server's own page may, and no CORS headers are "
                          "sent")  # fmt: skip
    limits = parser.add_argument_group("limits (each refused request gets an OpenAI-style error)")
    limits.add_argument(
        "--max-body-bytes",
        type=parse_size,
        default=32 * MiB,
        metavar="SIZE",
        help="largest JSON request body (413; default 32M)",
    )
    limits.add_argument(
        "--max-upload-bytes",
        type=parse_size,
        default=64 * MiB,
        metavar="SIZE",
        help="largest document upload (413; default 64M)",
    )
    limits.add_argument("--max-prompt-chars", type=positive_int, default=None, metavar="N",
                        help=f"most characters in one prompt, chat or document, checked before tokenizing (413; "
                        f"default: {CHARS_PER_TOKEN} x the session length)")  # fmt: skip
    limits.add_argument(
        "--max-prompts-per-request",
        type=positive_int,
        default=64,
        metavar="N",
        help="most prompts in one /v1/completions or /get_ppl request (413)",
    )
    limits.add_argument(
        "--max-pdf-pages", type=positive_int, default=1000, metavar="N", help="most pages of an uploaded PDF (413)"
    )
    limits.add_argument(
        "--pdf-timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="longest text extraction of one uploaded PDF (413)",
    )
    return parser


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="OpenAI-compatible server and document-chat page",
        description="Serve MODEL over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
        "/v1/models, /get_ppl, /health) with a document-chat page at /.", formatter_class=HelpFormatter,
    )  # fmt: skip
    configure_parser(parser)
    parser.set_defaults(handler=run_serve)
    return parser


def model_name_for(model: str) -> str:
    path = os.path.normpath(str(model))
    base = os.path.basename(path)
    return base[: -len(".gguf")] if base.endswith(".gguf") else base


def build_app(args: argparse.Namespace):
    try:
        from lmx.server.app import create_app
        from lmx.server.guards import ServerLimits
    except ModuleNotFoundError as e:
        raise ValueError(f"lmx serve needs the 'serve' extra (pip install 'lmx[serve]'): {e}") from None
    from lmx import pipeline

    config = engine_config_from_args(args)
    limits = ServerLimits(
        max_body_bytes=args.max_body_bytes, max_upload_bytes=args.max_upload_bytes,
        max_prompt_chars=args.max_prompt_chars, max_prompts_per_request=args.max_prompts_per_request,
        max_pdf_pages=args.max_pdf_pages, pdf_timeout=args.pdf_timeout,
    )  # fmt: skip
    pipe = pipeline(args.model, engine_config=config)
    return create_app(
        pipe, model_name=args.model_name or model_name_for(args.model), api_key=args.api_key, limits=limits,
        bind_host=args.host, allowed_hosts=tuple(args.allowed_hosts), allowed_origins=tuple(args.allowed_origins),
    )  # fmt: skip


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before the model loads, so a port in use fails at once, in one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"--host: cannot resolve {host!r} ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise OSError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}); is another server "
                      "running there? choose another --port") from None  # fmt: skip
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_serve(args: argparse.Namespace) -> int:
    sock = bind_socket(args.host, args.port)
    try:
        app = build_app(args)
        import uvicorn

        kv = app.state.engine.pipe.engine.kv_cache_stats()
        print(f"lmx serve: {app.state.model_name} on http://{args.host}:{args.port} "
              f"(session_len {app.state.engine.pipe.max_sequence_len}; KV cache {kv['kv_cache_dtype']}, "
              f"{kv['num_blocks']} blocks = {kv['capacity_tokens']} tokens, {kv['kv_cache_bytes'] / 2**20:.0f} MiB); "
              f"document chat at /", flush=True)  # fmt: skip
        server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level))
        server.run(sockets=[sock])
        if not server.started:
            raise OSError("the server did not start (see the log above)")
    finally:
        sock.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m lmx.server", description=__doc__))
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except (ValueError, TypeError, OSError) as e:
        if os.environ.get("LMX_DEBUG"):
            raise
        print(f"lmx serve: error: {e}", file=sys.stderr)
        return 1
