"""What every evaluation shares: RoPE settings, building a pipeline per setting, reading input files.

Evaluations reach the engine only through the public API (``lmx.pipeline``, ``EngineConfig``,
``GenerationConfig``), and take a *pipeline factory* so tests can pass a fake one.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

DEFAULT_MODEL = "smollm2-135m"
ROPE_TYPES = ("default", "dynamic", "linear", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeSetting:
    """One way of running the model's RoPE: ``default``, or a scaling type with a factor (``dynamic:2``)."""

    rope_type: str = "default"
    factor: float = 1.0

    @property
    def name(self) -> str:
        return "default" if self.rope_type == "default" else f"{self.rope_type}:{self.factor:g}"

    def engine_kwargs(self) -> dict[str, Any]:
        """``EngineConfig`` fields that select this setting (it overrides whatever the model's config says)."""
        if self.rope_type == "default":
            return {"rope_scaling": {"rope_type": "default"}}
        return {"rope_scaling": {"rope_type": self.rope_type, "factor": self.factor}}


def parse_rope_setting(text: str) -> RopeSetting:
    """``default`` | ``dynamic:2`` | ``linear:4`` | ``yarn:4``; a bare number ``F`` is LMDeploy's
    ``rope_scaling_factor``: dynamic NTK with factor ``F`` when ``F > 1``, default otherwise."""
    spec = text.strip().lower()
    try:
        number = float(spec)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"--rope-scaling-factor: expected a finite number >= 0, got {text!r}")
        return RopeSetting("dynamic", number) if number > 1 else RopeSetting()
    rope_type, _, factor_text = spec.partition(":")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"--rope: expected one of {', '.join(ROPE_TYPES)} (with ':FACTOR'), got {text!r}")
    if rope_type == "default":
        if factor_text:
            raise ValueError(f"--rope: 'default' takes no factor, got {text!r}")
        return RopeSetting()
    try:
        factor = float(factor_text) if factor_text else 2.0
    except ValueError:
        raise ValueError(f"--rope: expected a number after '{rope_type}:', got {text!r}") from None
    if not math.isfinite(factor) or factor < 1.0:
        raise ValueError(f"--rope: expected a finite factor >= 1 for {rope_type}, got {text!r}")
    return RopeSetting(rope_type, factor)


def rope_settings(specs: list[str] | None, factors: list[float] | None) -> list[RopeSetting]:
    """The settings asked for by ``--rope`` and ``--rope-scaling-factor`` (in that order, without repeats)."""
    settings = [parse_rope_setting(s) for s in specs or []]
    settings += [parse_rope_setting(str(f)) for f in factors or []]
    unique = list(dict.fromkeys(settings))
    return unique or [RopeSetting()]


# A factory builds a pipeline for one RoPE setting: ``factory(setting) -> pipeline``.
PipelineFactory = Callable[[RopeSetting], Any]


def engine_factory(
    model: str = DEFAULT_MODEL,
    *,
    session_len: int | None = None,
    max_batch_size: int = 1,
    dtype: str = "auto",
    device: str = "auto",
    num_threads: int | None = None,
    max_prefill_token_num: int | None = None,
) -> PipelineFactory:
    """A factory of real ``lmx`` pipelines for ``model`` with the given engine settings."""

    def build(setting: RopeSetting):
        from lmx import EngineConfig, pipeline

        extra: dict[str, Any] = {}
        if max_prefill_token_num:
            extra["max_prefill_token_num"] = max_prefill_token_num
        config = EngineConfig(
            session_len=session_len, max_batch_size=max_batch_size, dtype=dtype, device=device,
            num_threads=num_threads, **setting.engine_kwargs(), **extra,
        )  # fmt: skip
        return pipeline(model, engine_config=config)

    return build


def each_setting(factory: PipelineFactory, settings: list[RopeSetting]) -> Iterator[tuple[RopeSetting, Any]]:
    """Yield ``(setting, pipeline)`` one at a time, dropping each pipeline before building the next (memory)."""
    for setting in settings:
        pipe = factory(setting)
        try:
            yield setting, pipe
        finally:
            del pipe
            gc.collect()


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
