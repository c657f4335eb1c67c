"""The wheel builds, installs into a clean virtualenv (no access to this checkout) and works there as a user meets
it: the ops run, ``lmx serve`` serves the chat page, its static files and a completion, ``lmx niah`` runs with
the bundled haystack, ``lmx demo --help`` answers, and a start-up failure is one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "server"))
from server_helpers import wait_until_healthy  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A clean virtualenv holding only the built wheel (with the ``serve`` extra) and what it requires."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(dist)], check=True, cwd=ROOT, env={**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", "1")})  # fmt: skip
    (wheel,) = dist.glob("lmx-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_version = torch.__version__.split("+")[0]
    # The wheel pins the torch it was built against; pip resolves it (from this machine's local torch build).
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"torch=={torch_version}",
                    f"{wheel}[serve]"], check=True)  # fmt: skip
    return venv


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LMX_DEBUG")}
    return {**env, "LMX_NO_PROGRESS": "1"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from server_helpers import make_tiny_chat_model

    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny-model"))


def test_wheel_ops_run_from_the_clean_virtualenv(venv, tmp_path):
    script = (
        "import torch, lmx.ops as ops\n"
        "from lmx.rope import RopeConfig\n"
        "info = ops.build_info(); assert info['torch'].startswith(torch.__version__.split('+')[0]), info\n"
        "q = torch.randn(3, 2, 64); ops.rotary_embedding(q, None, torch.arange(3), RopeConfig(rotary_dim=64))\n"
        "kc = torch.randn(1, 16, 1, 64); bt = torch.zeros(1, 1, dtype=torch.int32)\n"
        "out = ops.paged_attention(q, kc, kc.clone(), bt, torch.tensor([3], dtype=torch.int32),\n"
        "                          torch.tensor([0, 3], dtype=torch.int32), 0.125)\n"
        "assert torch.isfinite(out).all()\n"
        "import lmx, os; print(os.path.dirname(lmx.__file__))\n"
    )
    res = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert str(venv) in res.stdout, f"imported lmx from {res.stdout.strip()}, not from the clean virtualenv"


def test_wheel_serves_the_chat_page_and_a_completion(venv, tiny_model, tmp_path):
    import httpx
    from server_helpers import free_port

    port = free_port()
    cmd = [str(venv / "bin" / "lmx"), "serve", str(tiny_model), "--port", str(port), "--session-len", "128",
           "--device", "cpu", "--dtype", "float32", "--threads", "1", "--max-batch-size", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, timeout=180, interval=0.3)
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert httpx.get(f"{url}/static/app.js").status_code == 200
        out = httpx.post(f"{url}/v1/completions", json={"prompt": "the water", "max_tokens": 3, "ignore_eos": True},
                         timeout=60)  # fmt: skip
        assert out.status_code == 200, out.text
        assert out.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_wheel_runs_niah_with_the_bundled_haystack(venv, tiny_model, tmp_path):
    cmd = [str(venv / "bin" / "lmx"), "niah", "--model", str(tiny_model), "--lengths", "100", "--depths", "50",
           "--max-new-tokens", "2", "--device", "cpu", "--dtype", "float32", "--threads", "1",
           "--output", str(tmp_path / "out")]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "out" / "niah.json").is_file()


def test_wheel_demo_help_and_one_line_start_up_failure(venv, tmp_path):
    lmx = str(venv / "bin" / "lmx")
    res = subprocess.run([lmx, "demo", "--help"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert res.returncode == 0 and "--output" in res.stdout, res.stderr[-3000:]
    res = subprocess.run([lmx, "serve", str(tmp_path / "no-such-model")], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.strip().count("\n") == 0 and "no-such-model" in res.stderr, res.stderr
