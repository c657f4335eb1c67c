"""Applications use the engine's public API only: no module of lmx outside lmx/engine imports an engine submodule
(``lmx.engine.scheduler``, ``lmx.engine.config``, ...) or a name ``lmx.engine`` does not export. Imports are read
with ``ast`` (also the ones inside functions), relative ones resolved against the importing module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import lmx.engine

ROOT = Path(lmx.__file__).resolve().parent
ENGINE = ROOT / "engine"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def engine_internal_imports(path: Path) -> list[str]:
    """``file:line: what`` for each import of ``path`` that reaches past ``lmx.engine``'s public names."""
    module = _module_name(path)
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node, path)
            targets = [(source, alias.name) for alias in node.names]
        else:
            continue
        for source, name in targets:
            if source.startswith("lmx.engine."):
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: imports {source}")
            elif source == "lmx.engine" and name is not None and name not in lmx.engine.__all__:
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: imports lmx.engine.{name} (not public)")
    return bad


def test_no_module_outside_the_engine_imports_its_internals():
    files = [p for p in ROOT.rglob("*.py") if ENGINE not in p.parents]
    assert len(files) > 20  # the walk found the package
    bad = [line for path in sorted(files) for line in engine_internal_imports(path)]
    assert not bad, "engine internals imported outside lmx/engine:\n" + "\n".join(bad)


def test_the_checker_catches_internal_imports(tmp_path, monkeypatch):
    """The check itself: each forbidden form is reported, the public forms are not."""
    package = tmp_path / "lmx" / "server"
    package.mkdir(parents=True)
    probe = package / "probe.py"
    probe.write_text(
        "import lmx.engine.scheduler\n"
        "from lmx.engine.config import GenerationConfig\n"
        "from ..engine import pipeline as module, sampler\n"
        "from ..engine.llm_engine import LLMEngine\n"
        "def f():\n    from lmx.engine import Detokenizer\n"
        "from lmx.engine import GenerationConfig, RequestError\n"
        "from lmx import pipeline\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path / "lmx")
    bad = engine_internal_imports(probe)
    assert [line.split(": ", 1)[1] for line in bad] == [
        "imports lmx.engine.scheduler", "imports lmx.engine.config", "imports lmx.engine.sampler (not public)",
        "imports lmx.engine.llm_engine", "imports lmx.engine.Detokenizer (not public)",
    ]  # fmt: skip
