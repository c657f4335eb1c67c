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
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'lmx' has no attribute {name!r}")
