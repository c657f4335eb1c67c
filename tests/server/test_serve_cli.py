"""``python -m lmx.server MODEL`` / ``lmx serve MODEL``: starts, binds 127.0.0.1, serves, and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from server_helpers import free_port


def test_serve_command_starts_and_answers(tiny_model_dir):
    port = free_port()
    cmd = [sys.executable, "-m", "lmx.server", str(tiny_model_dir), "--session-len", "128", "--port", str(port),
           "--dtype", "float32", "--device", "cpu", "--max-batch-size", "4", "--api-key", "k", "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        headers = {"Authorization": "Bearer k"}
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers).json()
        assert models["data"][0]["id"] == tiny_model_dir.name and models["data"][0]["max_model_len"] == 128
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_help_and_lmx_cli_registration():
    out = subprocess.run([sys.executable, "-m", "lmx.server", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--session-len" in out.stdout and "--api-key" in out.stdout
    out = subprocess.run([sys.executable, "-m", "lmx", "serve", "--help"], capture_output=True, text=True,
                         env={**os.environ})  # fmt: skip
    assert out.returncode == 0 and "--rope-scaling-factor" in out.stdout, out.stderr[-2000:]
