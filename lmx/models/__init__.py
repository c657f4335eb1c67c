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

__all__ = ["MODEL_REGISTRY", "ForwardContext", "ModelConfig", "build_model", "model_config", "resolve_architecture"]


def resolve_architecture(config: Mapping[str, Any]) -> type[LlamaForCausalLM]:
    archs = config.get("architectures")
    if not archs or not isinstance(archs, (list, tuple)):
        raise ValueError(f"config: expected 'architectures' (a list naming the model class), got {archs!r}")
    arch = archs[0]
    if arch not in MODEL_REGISTRY:
        raise ValueError(f"config: unsupported architecture {arch!r}; lmx supports {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[arch]


def model_config(
    config: Mapping[str, Any],
    *,
    rope_scaling_factor: float | None = None,
    rope_scaling: Mapping[str, Any] | None = None,
) -> ModelConfig:
    """The validated ``ModelConfig`` of ``config`` (what ``build_model`` builds)."""
    cls = resolve_architecture(config)
    if cls is InternLM2ForCausalLM and config.get("bias"):
        raise ValueError("config: InternLM2 with bias=true (biased wqkv and wo) is not supported; expected bias=false")
    return ModelConfig.from_dict(
        config,
        config["architectures"][0],
        rope_scaling_factor=rope_scaling_factor,
        rope_scaling=rope_scaling,
        attention_bias=True if getattr(cls, "ATTENTION_BIAS", False) else None,
    )


def build_model(
    config: Mapping[str, Any],
    *,
    rope_scaling_factor: float | None = None,
    rope_scaling: Mapping[str, Any] | None = None,
    tp_rank: int = 0,
    tp_size: int = 1,
    lm_head: bool = True,
) -> LlamaForCausalLM:
    """An uninitialised model (``torch.empty`` parameters) for ``config``; fill it with ``load_weights``.

    ``tp_size > 1``: rank ``tp_rank``'s shard of it (``lmx.distributed.TPShard``); ``lm_head=False`` leaves out
    an untied LM head."""
    from lmx.distributed.shard import TPShard

    cls = resolve_architecture(config)
    model_cfg = model_config(config, rope_scaling_factor=rope_scaling_factor, rope_scaling=rope_scaling)
    return cls(model_cfg, TPShard.plan(model_cfg, tp_rank, tp_size), lm_head=lm_head)
