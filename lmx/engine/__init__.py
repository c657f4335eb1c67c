"""The inference engine (DESIGN §4): configs, block manager, scheduler, sampler, model runner, engine, pipeline.

The configs import without torch; the rest loads on demand.
"""

from __future__ import annotations

from typing import Any

from .config import EngineConfig, GenerationConfig

__all__ = ["EngineConfig", "GenerationConfig", "LLMEngine", "Pipeline", "pipeline"]


def __getattr__(name: str) -> Any:
    if name == "LLMEngine":
        from .llm_engine import LLMEngine

        return LLMEngine
    if name in ("Pipeline", "pipeline"):
        from . import pipeline as module

        return getattr(module, name)
    raise AttributeError(f"module 'lmx.engine' has no attribute {name!r}")
