"""The wheel builds, installs into a clean virtualenv (no access to this checkout) and its ops run there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_clean_virtualenv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(dist)], check=True, cwd=ROOT)
    (wheel,) = dist.glob("lmx-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    torch_version = torch.__version__.split("+")[0]
    # The wheel pins the torch it was built against; pip resolves it (from this machine's local torch build).
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"torch=={torch_version}", str(wheel)], check=True)
    script = (
        "import torch, lmx.ops as ops\n"
        "from lmx.rope import RopeConfig\n"
        "info = ops.build_info(); assert info['torch'].startswith(torch.__version__.split('+')[0]), info\n"
        "q = torch.randn(3, 2, 64); ops.rotary_embedding(q, None, torch.arange(3), RopeConfig(rotary_dim=64))\n"
        "kc = torch.randn(1, 16, 1, 64); bt = torch.zeros(1, 1, dtype=torch.int32)\n"
        "out = ops.paged_attention(q, kc, kc, bt, torch.tensor([3], dtype=torch.int32),\n"
        "                          torch.tensor([0, 3], dtype=torch.int32), 0.125)\n"
        "assert torch.isfinite(out).all()\n"
        "import lmx, os; print(os.path.dirname(lmx.__file__))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run([str(py), "-c", script], check=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert str(venv) in res.stdout, f"imported lmx from {res.stdout.strip()}, not from the clean virtualenv"
