"""``python -m lmx.server MODEL`` / ``lmx serve MODEL``: starts, binds 127.0.0.1, serves, and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from server_helpers import free_port, wait_until_healthy


def test_serve_command_starts_and_answers(tiny_model_dir):
    port = free_port()
    cmd = [sys.executable, "-m", "lmx.server", str(tiny_model_dir), "--session-len", "128", "--port", str(port),
           "--dtype", "float32", "--device", "cpu", "--max-batch-size", "4", "--api-key", "k", "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}")
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


def _serve(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "lmx", "serve", *args], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "LMX_DEBUG"}, **kwargs)  # fmt: skip


def _one_line_failure(res) -> str:
    assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr[-3000:]
    return res.stderr.strip()


def test_start_up_failures_are_one_line(tiny_model_dir, tmp_path):
    line = _one_line_failure(_serve([str(tmp_path / "no-such-model"), "--port", str(free_port())]))
    assert line.startswith("lmx serve: error: model:") and "no-such-model" in line
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = _one_line_failure(_serve([str(tiny_model_dir), "--port", str(port), "--device", "cpu"]))
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in line
    script = ("import pathlib, sys; import lmx.server.app as app; app.STATIC_DIR = pathlib.Path(sys.argv[1]);"
              "from lmx.cli import main; sys.exit(main(['serve', sys.argv[2], '--port', sys.argv[3], '--device', 'cpu',"
              "'--dtype', 'float32', '--threads', '1']))")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "gone"), str(tiny_model_dir), str(free_port())],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    line = _one_line_failure(res)
    assert "chat page: expected lmx's static files in" in line and "gone" in line


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "-inf"])
@pytest.mark.parametrize("command", ["serve", "passkey", "niah", "ppl", "repeat", "longbench", "generate", "chat"])
def test_rope_scaling_factor_must_be_finite_in_every_command(command, value, capsys):
    from lmx.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, f"--rope-scaling-factor={value}"])
    assert exit_info.value.code == 2
    assert f"--rope-scaling-factor: expected a finite number >= 0, got '{value}'" in capsys.readouterr().err


def test_serve_limit_flags_reach_the_app(tiny_model_dir):
    from lmx.cli import build_parser
    from lmx.server.cli import build_app

    args = build_parser().parse_args([
        "serve", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--threads", "1", "--num-blocks", "32",
        "--max-body-bytes", "2M", "--max-upload-bytes", "3M", "--max-prompt-chars", "999",
        "--max-prompts-per-request", "5", "--max-queued-requests", "7", "--max-pdf-pages", "9", "--pdf-timeout", "2.5",
        "--allowed-hosts", "my.box", "--allowed-origins", "http://localhost:3000",
    ])  # fmt: skip
    app = build_app(args)
    limits = app.state.limits
    assert (limits.max_body_bytes, limits.max_upload_bytes) == (2 * 1024 * 1024, 3 * 1024 * 1024)
    assert (limits.max_prompt_chars, limits.max_prompts_per_request) == (999, 5)
    assert (limits.max_pdf_pages, limits.pdf_timeout) == (9, 2.5)
    assert app.state.engine.pipe.engine.scheduler.max_queued_requests == 7
    defaults = build_parser().parse_args(["serve"])
    assert (defaults.max_body_bytes, defaults.max_upload_bytes) == (32 * 1024 * 1024, 64 * 1024 * 1024)
    assert (defaults.max_prompt_chars, defaults.max_prompts_per_request, defaults.max_queued_requests) == (
        None,
        64,
        256,
    )
    assert (defaults.max_pdf_pages, defaults.pdf_timeout) == (1000, 60.0)
