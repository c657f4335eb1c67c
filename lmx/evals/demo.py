"""The main job (``make run``): the seeds' headline on the embedded SmolLM2-135M-Instruct, on a laptop CPU.

1. Passkey retrieval (seed 000's prompt) at about 4k and 15k tokens with default RoPE and with dynamic NTK 2.0:
   the model's trained context is 8192 tokens, so default RoPE fails at 15k and dynamic NTK keeps the key.
2. A small needle-in-a-haystack heatmap inside the trained context.

    lmx demo --output demo/results          # or: python -m lmx.evals.demo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..engine import KV_CACHE_DTYPES
from . import niah, options, passkey, report
from .common import DEFAULT_MODEL, RopeSetting, engine_factory

PASSKEY_LENGTHS = [4096, 15360]
PASSKEY_SETTINGS = [RopeSetting("default"), RopeSetting("dynamic", 2.0)]
NIAH_LENGTHS = [2048, 4096, 7680]
NIAH_DEPTHS = [0.0, 50.0, 100.0]


def run_demo(args: argparse.Namespace) -> int:
    output = report.prepare_output(args.output)
    assert output is not None
    started = time.perf_counter()
    session_len = max(PASSKEY_LENGTHS) + 128
    kv = args.kv_cache_dtype
    factory = engine_factory(
        args.model, session_len=session_len, num_threads=args.threads, tp=args.tp, kv_cache_dtype=kv
    )
    print(f"lmx demo: {args.model}, passkey at {PASSKEY_LENGTHS} tokens x {args.rounds} rounds, "
          f"RoPE {', '.join(s.name for s in PASSKEY_SETTINGS)}; then a needle heatmap\n", flush=True)  # fmt: skip

    result = passkey.run_passkey(factory, PASSKEY_SETTINGS, PASSKEY_LENGTHS, rounds=args.rounds, seed=args.seed)
    header = {"command": "demo/passkey", "config": {"model": args.model, "session_len": session_len, "seed": args.seed}}
    written = passkey.print_and_save(result, output, header)
    print(flush=True)

    niah_factory = engine_factory(
        args.model, session_len=max(NIAH_LENGTHS) + 128, num_threads=args.threads, tp=args.tp, kv_cache_dtype=kv
    )
    result_niah = niah.run_niah(niah_factory, [RopeSetting()], NIAH_LENGTHS, NIAH_DEPTHS, seed=args.seed)
    header = {"command": "demo/niah", "config": {"model": args.model, "seed": args.seed}}
    written += niah.print_and_save(result_niah, output, header)

    print(f"\nlmx demo: done in {time.perf_counter() - started:.0f} s; results:")
    for path in written:
        print(f"  {path}")
    _headline(result)
    return 0


def _headline(result: dict[str, Any]) -> None:
    acc = {(s["setting"], s["length"]): s for s in result["summary"]}
    trained = result.get("trained_length")
    longest = max(PASSKEY_LENGTHS)
    default, dynamic = acc.get(("default", longest)), acc.get(("dynamic:2", longest))
    if default and dynamic:
        print(f"\nheadline: at ~{default['prompt_tokens']} tokens (trained context {trained}), default RoPE found "
              f"{default['correct']}/{default['rounds']} pass keys, dynamic NTK 2.0 found "
              f"{dynamic['correct']}/{dynamic['rounds']}.")  # fmt: skip


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job: passkey default vs dynamic NTK at 4k/15k tokens and a needle heatmap",
        description=(__doc__ or "").replace("``", "'"), formatter_class=options.HelpFormatter,
    )  # fmt: skip
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--rounds", type=options.positive_int, default=1,
        help="passkey prompts per length and setting (a 15k-token prompt takes 2-4 minutes on 2 CPU cores)",
    )  # fmt: skip
    parser.add_argument("--seed", type=options.non_negative_int, default=0)
    parser.add_argument("--threads", type=options.positive_int, default=None)
    parser.add_argument("--tp", type=options.positive_int, default=1, help="tensor-parallel ranks (EngineConfig.tp)")
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto", help="KV cache format")
    parser.add_argument("--output", default=str(Path("demo") / "results"), help="where JSON and PNGs go")
    parser.set_defaults(handler=run_demo)


if __name__ == "__main__":
    from lmx.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
