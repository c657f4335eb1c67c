"""The inference engine (DESIGN §4): configs, block manager, scheduler, sampler, model runner, engine, pipeline.

Applications (the server, the evaluations, the lm-eval backend, the command line) use only the names exported
here; the submodules are the engine's internals. The configs and errors import without torch; the rest loads on
demand.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import (
    KV_CACHE_DTYPES,
    LOGPROBS_MAX,
    MAX_NEW_TOKENS_MAX,
    REPETITION_PENALTY_RANGE,
    SEED_RANGE,
    TEMPERATURE_MAX,
    TOP_K_MAX,
    EngineConfig,
    GenerationConfig,
)  # fmt: skip
from .errors import EngineBusyError, RequestError, RequestTypeError, as_request_error

__all__ = [
    "EngineConfig", "GenerationConfig", "EngineBusyError", "RequestError", "RequestTypeError", "as_request_error",
    "LLMEngine", "Pipeline", "pipeline", "Response", "OutputStream", "sampling_config",
    "KV_CACHE_DTYPES", "LOGPROBS_MAX", "MAX_NEW_TOKENS_MAX", "REPETITION_PENALTY_RANGE", "SEED_RANGE", "TEMPERATURE_MAX", "TOP_K_MAX",
]  # fmt: skip


_LAZY = {"LLMEngine": "llm_engine", "Pipeline": "pipeline", "pipeline": "pipeline", "Response": "pipeline",
         "OutputStream": "pipeline", "sampling_config": "pipeline"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lmx.engine' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    # Importing the submodule ``pipeline`` binds that name to the module; the public name is the factory.
    for public, source in _LAZY.items():
        if source == _LAZY[name]:
            globals()[public] = getattr(module, public)
    return globals()[name]
