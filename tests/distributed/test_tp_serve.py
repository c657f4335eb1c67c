"""``lmx serve --tp 2``: started as a plain process (workers spawned) and under ``torchrun --nproc-per-node 2``
(rank 1 binds no port); both answer like tp=1 and stop on SIGTERM with their workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from engine_helpers import random_prompt
from test_tp_launch import TORCHRUN, free_port, job_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import make_tiny_chat_model, wait_until_healthy  # noqa: E402

from lmx import EngineConfig, GenerationConfig, pipeline  # noqa: E402

ENGINE_ARGS = ["--session-len", "128", "--dtype", "float32", "--device", "cpu", "--max-batch-size", "4",
               "--threads", "1", "--num-blocks", "64", "--block-size", "16"]  # fmt: skip


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return make_tiny_chat_model(tmp_path_factory.mktemp("tp-chat"))


def expected_text(directory, prompt):
    config = EngineConfig(session_len=128, dtype="float32", device="cpu", max_batch_size=4, num_threads=1,
                          num_blocks=64, block_size=16)  # fmt: skip
    with pipeline(directory, engine_config=config) as pipe:
        return pipe(prompt, gen_config=GenerationConfig(max_new_tokens=12, ignore_eos=True)).text


def spawned_workers(pid: int) -> list[int]:
    """The torch.multiprocessing children of process ``pid`` (not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def serve_and_ask(cmd, port, prompt, stop_codes=(0, -signal.SIGTERM), then=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_env())
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}")
        body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        if then is not None:
            then(proc, port, body)
        return answer.json()["choices"][0]["text"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
            assert code in stop_codes, proc.stdout.read()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_serve_tp2_spawns_workers(chat_model):
    prompt = random_prompt(20, seed=9)
    port = free_port()
    cmd = [sys.executable, "-m", "lmx", "serve", str(chat_model), "--port", str(port), "--tp", "2", *ENGINE_ARGS]

    def kill_the_worker(proc, port, body):  # the next request fails with the reason; /health says 503
        [worker] = spawned_workers(proc.pid)
        os.kill(worker, signal.SIGKILL)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)
        assert answer.status_code >= 500 and "tp: worker rank 1" in answer.text, answer.text
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 503 and "WorkerLostError" in health.text, health.text

    assert serve_and_ask(cmd, port, prompt, then=kill_the_worker) == expected_text(chat_model, prompt)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")
def test_serve_tp2_on_two_torchrun_nodes(chat_model):
    """The README's multi-node command, both nodes on 127.0.0.1: node 1's rank binds no port and leaves with node 0."""
    prompt = random_prompt(20, seed=10)
    port, master = free_port(), str(free_port())

    def node(rank: int) -> list[str]:
        return [str(TORCHRUN), "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                "--master-addr", "127.0.0.1", "--master-port", master,
                "-m", "lmx", "serve", str(chat_model), "--port", str(port), "--tp", "2", *ENGINE_ARGS]  # fmt: skip

    other = subprocess.Popen(node(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_env())
    try:
        # torchrun itself answers SIGTERM with exit status 1 (its SignalException), after stopping its rank.
        assert serve_and_ask(node(0), port, prompt, stop_codes=(0, 1)) == expected_text(chat_model, prompt)
        out, _ = other.communicate(timeout=60)
        assert "lmx serve:" not in out  # only node 0 served
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
