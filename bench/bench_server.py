"""Load on an ``lmx serve`` server: N concurrent requests (mixed streaming and not, mixed lengths) from one
asyncio client; prints requests/s, output tokens/s and time-to-first-token percentiles, and writes JSON.

    python bench/bench_server.py --url http://127.0.0.1:23333 --requests 64         # a running server
    python bench/bench_server.py --tiny --requests 64                               # starts one on a tiny model

Greedy requests only (temperature 0), so ``--check`` can compare every answer with the same request sent alone.
Only 127.0.0.1 is targeted by ``--tiny``; ``--url`` is whatever you point it at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path


def make_requests(count: int, seed: int = 0, vocab_words: list[str] | None = None) -> list[dict]:
    """``count`` greedy completion / chat bodies: half streamed, prompts of 4 to ~120 words, 4 to 32 new tokens."""
    rng = random.Random(seed)
    words = vocab_words or "the man said that the old house was near the water and we can see it".split()
    bodies = []
    for i in range(count):
        prompt = " ".join(rng.choice(words) for _ in range(rng.choice([4, 16, 48, 120])))
        body = {"max_tokens": rng.choice([4, 8, 16, 32]), "temperature": 0, "stream": i % 2 == 1}
        if i % 4 < 2:
            body["prompt"] = prompt
        else:
            body["messages"] = [{"role": "user", "content": prompt}]
        bodies.append(body)
    return bodies


async def send(client, body: dict) -> dict:
    """One request; returns its text, finish reason, latency and time to first token (seconds)."""
    chat = "messages" in body
    path = "/v1/chat/completions" if chat else "/v1/completions"
    start = time.perf_counter()
    if not body["stream"]:
        r = await client.post(path, json=body)
        r.raise_for_status()
        choice = r.json()["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        elapsed = time.perf_counter() - start
        return {"text": text, "finish_reason": choice["finish_reason"], "ttft": elapsed, "latency": elapsed}
    text, finish, ttft = "", None, None
    async with client.stream("POST", path, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            piece = choice["delta"].get("content", "") if chat else choice["text"]
            if piece and ttft is None:
                ttft = time.perf_counter() - start
            text += piece
            finish = choice["finish_reason"] or finish
    latency = time.perf_counter() - start
    return {"text": text, "finish_reason": finish, "ttft": ttft if ttft is not None else latency, "latency": latency}


async def run_load(url: str, bodies: list[dict], *, concurrent: bool = True, headers: dict | None = None) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, headers=headers) as client:
        start = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*(send(client, b) for b in bodies))
        else:
            results = [await send(client, b) for b in bodies]
        wall = time.perf_counter() - start
    return {"results": list(results), "wall_s": wall, **summarise(list(results), wall)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(results: list[dict], wall: float) -> dict:
    ttft = [r["ttft"] for r in results]
    return {
        "requests": len(results), "requests_per_s": len(results) / wall,
        "ttft_ms": {f"p{q}": 1000 * percentile(ttft, q) for q in (50, 90, 99)},
        "latency_ms": {f"p{q}": 1000 * percentile([r["latency"] for r in results], q) for q in (50, 90, 99)},
        "mean_latency_ms": 1000 * statistics.mean(r["latency"] for r in results),
    }  # fmt: skip


def _tiny_server(directory: Path):
    """A tiny random model and a server on 127.0.0.1 (the helpers of the server tests)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))
    from server_helpers import WORDS, make_tiny_chat_model, running_server

    from lmx import EngineConfig, pipeline
    from lmx.server.app import create_app

    make_tiny_chat_model(directory)
    config = EngineConfig(dtype="float32", device="cpu", block_size=16, num_blocks=1024, max_batch_size=64,
                          session_len=512)  # fmt: skip
    return running_server(create_app(pipeline(directory, engine_config=config), model_name="tiny")), WORDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="base URL of a running server")
    parser.add_argument("--tiny", action="store_true", help="start a server on a tiny random model (127.0.0.1)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--check", action="store_true", help="also send each request alone and compare answers")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    if bool(args.url) == args.tiny:
        parser.error("give exactly one of --url or --tiny")
    if args.requests < 1 or args.requests > 1024:
        parser.error("--requests: expected 1 to 1024")

    def measure(url: str, words=None) -> dict:
        bodies = make_requests(args.requests, vocab_words=words)
        load = asyncio.run(run_load(url, bodies))
        report = {k: v for k, v in load.items() if k != "results"}
        if args.check:
            alone = asyncio.run(run_load(url, bodies, concurrent=False))
            report["sequential_requests_per_s"] = alone["requests_per_s"]
            report["matches_sequential"] = [r["text"] for r in load["results"]] == [r["text"] for r in alone["results"]]
        return report

    if args.tiny:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            context, words = _tiny_server(Path(tmp))
            with context as url:
                report = measure(url, words)
    else:
        report = measure(args.url)
    print(f"{report['requests']} requests in {report['wall_s']:.2f} s: {report['requests_per_s']:.1f} requests/s; "
          f"TTFT p50 {report['ttft_ms']['p50']:.0f} ms, p90 {report['ttft_ms']['p90']:.0f} ms, "
          f"p99 {report['ttft_ms']['p99']:.0f} ms")  # fmt: skip
    if "matches_sequential" in report:
        print(f"one at a time: {report['sequential_requests_per_s']:.1f} requests/s; "
              f"concurrent answers equal sequential ones: {report['matches_sequential']}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
