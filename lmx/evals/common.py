"""What every evaluation shares: RoPE settings, building a pipeline per setting, reading input files.

Evaluations reach the engine only through the public API (``lmx.pipeline``, ``EngineConfig``,
``GenerationConfig``), and take a *pipeline factory* so tests can pass a fake one.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lmx.cli import RopeSetting, parse_rope_setting, rope_settings

__all__ = ["RopeSetting", "parse_rope_setting", "rope_settings"]  # re-exported: what the evaluations run

DEFAULT_MODEL = "smollm2-135m"


# A factory builds a pipeline for one RoPE setting: ``factory(setting) -> pipeline``.
PipelineFactory = Callable[[RopeSetting], Any]


def engine_factory(model: str = DEFAULT_MODEL, engine_config: Any = None, **fields: Any) -> PipelineFactory:
    """A factory of real ``lmx`` pipelines for ``model``: ``engine_config`` (or an ``EngineConfig`` of ``fields``;
    ``max_batch_size`` defaults to the evaluations' 4) with each setting's RoPE fields on top."""

    def build(setting: RopeSetting):
        from lmx import EngineConfig, pipeline

        base = engine_config or EngineConfig(**{"max_batch_size": 4, **fields})
        return pipeline(model, engine_config=dataclasses.replace(base, **setting.engine_kwargs()))

    return build


def each_setting(factory: PipelineFactory, settings: list[RopeSetting]) -> Iterator[tuple[RopeSetting, Any]]:
    """Yield ``(setting, pipeline)`` one at a time, dropping each pipeline before building the next (memory)."""
    for setting in settings:
        pipe = factory(setting)
        try:
            yield setting, pipe
        finally:
            close = getattr(pipe, "close", None)  # a tensor-parallel engine frees its workers for the next one
            if close is not None:
                close()
            del pipe
            gc.collect()


def generate_batch(pipe: Any, prompts: list[list[int]], gen: Any, bar: Any = None) -> tuple[list[str], float]:
    """Generate for all ``prompts`` as one batch (the engine runs ``max_batch_size`` of them at once); returns
    the texts, in order, and the mean seconds per prompt. ``bar`` advances by the number of prompts."""
    if not prompts:
        return [], 0.0
    start = time.perf_counter()
    texts = [r.text for r in pipe(prompts, gen_config=gen)]
    if bar is not None:
        bar.update(len(prompts))
    return texts, (time.perf_counter() - start) / len(prompts)


def check_lengths(lengths: list[int], session_len: int | None, *, what: str = "--lengths") -> None:
    if not lengths:
        raise ValueError(f"{what}: expected at least one length, got none")
    bad = [n for n in lengths if n < 1]
    if bad:
        raise ValueError(f"{what}: expected positive token counts, got {bad}")
    if session_len is not None:
        too_long = [n for n in lengths if n > session_len]
        if too_long:
            raise ValueError(
                f"{what}: {too_long} exceed --session-len {session_len}; raise --session-len or pick shorter lengths"
            )


def read_text(path: str | os.PathLike, *, what: str) -> str:
    """A UTF-8 text file's content; a missing, unreadable or empty file is a ``ValueError`` naming ``what``."""
    file = Path(path)
    if not file.exists():
        raise ValueError(f"{what}: expected a text file, got {str(path)!r}, which does not exist")
    if not file.is_file():
        raise ValueError(f"{what}: expected a text file, got {str(path)!r}, which is not a file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: expected UTF-8 text in {str(path)!r}, got undecodable bytes at {e.start}") from None
    if not text.strip():
        raise ValueError(f"{what}: expected some text in {str(path)!r}, got an empty file")
    return text


def data_path(name: str) -> Path:
    """A file bundled in ``lmx/data``."""
    return Path(__file__).resolve().parent.parent / "data" / name


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (what a piece of a prompt costs)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def trained_length(pipe: Any) -> int | None:
    """The model's trained context (``max_position_embeddings``), when the pipeline exposes it."""
    value = getattr(pipe, "max_position_embeddings", None)
    return int(value) if value else None


def prompt_ids(pipe: Any, prompt: str, *, chat: bool, system: str | None = None) -> list[int]:
    """The token ids ``pipe`` runs for ``prompt``: the raw text, or the text through the model's chat template."""
    if not chat:
        return list(pipe.encode(prompt))
    messages: list[Mapping[str, str]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return list(pipe.encode(messages))
