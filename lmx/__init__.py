"""lmx: long-context LLM inference — fused RoPE with dynamic NTK, paged KV cache, paged attention, and an engine.

``import lmx`` stays cheap: the engine (and torch, the kernels) load on first use of ``pipeline``,
``EngineConfig`` or ``GenerationConfig``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["pipeline", "EngineConfig", "GenerationConfig"]

if TYPE_CHECKING:
    from .engine import EngineConfig, GenerationConfig, pipeline


def __getattr__(name: str) -> Any:
    if name in ("EngineConfig", "GenerationConfig"):
        from .engine import config

        return getattr(config, name)
    if name == "pipeline":
        from .engine.pipeline import pipeline

        return pipeline
    raise AttributeError(f"module 'lmx' has no attribute {name!r}")
