"""The README's Python examples run as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_ops_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "ops.paged_attention" in b)
    scope: dict = {}
    exec(compile(example, str(README), "exec"), scope)
    assert (scope["out"].double() - scope["ref"]).abs().max() < 1e-5
