"""Load: 64 concurrent requests (streaming and not, completions and chat, mixed lengths) all succeed, share the
engine's batch, and give the same greedy answers as the same requests sent one at a time."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

from server_helpers import WORDS

spec = importlib.util.spec_from_file_location("bench_server", Path(__file__).resolve().parents[2] / "bench" /
                                              "bench_server.py")  # fmt: skip
bench_server = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_server)

NUM_REQUESTS = 64


def test_64_concurrent_requests_equal_sequential(server):
    url, app = server
    bodies = bench_server.make_requests(NUM_REQUESTS, seed=1, vocab_words=WORDS)
    assert {b["stream"] for b in bodies} == {True, False} and {"prompt" in b for b in bodies} == {True, False}
    steps = []
    engine = app.state.engine.pipe.engine
    original_step = engine.step

    def counting_step():
        steps.append(len(engine.scheduler.running))
        return original_step()

    engine.step = counting_step
    try:
        load = asyncio.run(bench_server.run_load(url, bodies))
    finally:
        del engine.step
    alone = asyncio.run(bench_server.run_load(url, bodies, concurrent=False))
    assert len(load["results"]) == NUM_REQUESTS
    assert all(r["finish_reason"] in ("stop", "length") for r in load["results"])
    assert [r["text"] for r in load["results"]] == [r["text"] for r in alone["results"]]
    assert max(steps) >= 16, "concurrent requests should share the engine's running batch"
    print(f"\n{NUM_REQUESTS} concurrent: {load['requests_per_s']:.1f} req/s, TTFT p50/p90/p99 "
          f"{load['ttft_ms']['p50']:.0f}/{load['ttft_ms']['p90']:.0f}/{load['ttft_ms']['p99']:.0f} ms; "
          f"one at a time: {alone['requests_per_s']:.1f} req/s")  # fmt: skip
