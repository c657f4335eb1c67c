"""Model registry: ``config.json``'s ``architectures[0]`` -> the lmx class that runs it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .internlm2 import InternLM2ForCausalLM
from .layers import ForwardContext, ModelConfig
from .llama import LlamaForCausalLM
from .qwen2 import Qwen2ForCausalLM

MODEL_REGISTRY: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "InternLM2ForCausalLM": InternLM2ForCausalLM,
}

__all__ = ["MODEL_REGISTRY", "ForwardContext", "ModelConfig", "build_model", "resolve_architecture"]


def resolve_architecture(config: Mapping[str, Any]) -> type[LlamaForCausalLM]:
    archs = config.get("architectures")
    if not archs or not isinstance(archs, (list, tuple)):
        raise ValueError(f"config: expected 'architectures' (a list naming the model class), got {archs!r}")
    arch = archs[0]
    if arch not in MODEL_REGISTRY:
        raise ValueError(f"config: unsupported architecture {arch!r}; lmx supports {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[arch]


def build_model(
    config: Mapping[str, Any],
    *,
    rope_scaling_factor: float | None = None,
    rope_scaling: Mapping[str, Any] | None = None,
) -> LlamaForCausalLM:
    """An uninitialised model (``torch.empty`` parameters) for ``config``; fill it with ``load_weights``."""
    cls = resolve_architecture(config)
    if cls is InternLM2ForCausalLM and config.get("bias"):
        raise ValueError("config: InternLM2 with bias=true (biased wqkv and wo) is not supported; expected bias=false")
    model_cfg = ModelConfig.from_dict(
        config,
        config["architectures"][0],
        rope_scaling_factor=rope_scaling_factor,
        rope_scaling=rope_scaling,
        attention_bias=True if getattr(cls, "ATTENTION_BIAS", False) else None,
    )
    return cls(model_cfg)
