"""Qwen2: the Llama decoder with biases on the q, k and v projections (none on o_proj)."""

from __future__ import annotations

from .llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    # ModelConfig.from_dict(..., attention_bias=True) gives the fused qkv its bias; the names are Llama's.
    ATTENTION_BIAS = True
