"""``lmx serve MODEL``: the OpenAI-compatible server and document-chat page on FastAPI + uvicorn.

``add_serve_parser(subparsers)`` adds the subcommand (its handler is ``run_serve``); ``main(argv)`` runs it alone
(``python -m lmx.server MODEL ...``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from lmx.evals.options import positive_int

DEFAULT_MODEL = "smollm2-135m"


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
    parser.add_argument("--session-len", type=positive_int, default=None,
                        help="longest prompt + answer in tokens (default: the model's trained length, times the "
                        "dynamic factor)")  # fmt: skip
    parser.add_argument("--rope-scaling-factor", type=float, default=0.0,
                        help="F > 1 turns on dynamic NTK RoPE with factor F (LMDeploy's option)")
    parser.add_argument("--max-batch-size", type=positive_int, default=64, help="sequences in flight at once")
    parser.add_argument("--num-blocks", type=positive_int, default=None, help="KV-cache blocks (default: by memory)")
    parser.add_argument("--block-size", type=positive_int, default=64, help="tokens per KV-cache block")
    parser.add_argument("--cache-max-entry-count", type=float, default=0.8,
                        help="fraction of free memory for the KV cache (LMDeploy's option)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", "--server-port", type=_port, default=23333, help="port (default 23333)")
    parser.add_argument("--api-key", default=os.environ.get("LMX_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $LMX_API_KEY, else no key)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="OpenAI-compatible server and document-chat page",
        description="Serve MODEL over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
        "/v1/models, /get_ppl, /health) with a document-chat page at /.",
    )  # fmt: skip
    configure_parser(parser)
    parser.set_defaults(handler=run_serve)
    return parser


def model_name_for(model: str) -> str:
    path = os.path.normpath(str(model))
    base = os.path.basename(path)
    return base[: -len(".gguf")] if base.endswith(".gguf") else base


def build_app(args: argparse.Namespace):
    from lmx import EngineConfig, pipeline
    from lmx.server.app import create_app

    config = EngineConfig(
        session_len=args.session_len, rope_scaling_factor=args.rope_scaling_factor,
        max_batch_size=args.max_batch_size, num_blocks=args.num_blocks, block_size=args.block_size,
        cache_max_entry_count=args.cache_max_entry_count, dtype=args.dtype, device=args.device,
        num_threads=args.threads,
    )  # fmt: skip
    pipe = pipeline(args.model, engine_config=config)
    return create_app(pipe, model_name=args.model_name or model_name_for(args.model), api_key=args.api_key)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    app = build_app(args)
    print(f"lmx serve: {app.state.model_name} on http://{args.host}:{args.port} "
          f"(session_len {app.state.engine.engine.max_sequence_len}); document chat at /", flush=True)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
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
