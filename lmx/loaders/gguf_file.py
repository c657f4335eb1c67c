"""GGUF files (llama.cpp): metadata -> a ``config.json``-style dict, tensors dequantised with the ``gguf`` package.

llama.cpp's converter permutes the rows of the llama architecture's Q and K projections (it rotates adjacent
pairs, Hugging Face rotates halves); ``_unpermute`` reverses that so the weights fit lmx's neox rotation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# GGUF architecture -> (Hugging Face class, whether Q/K rows were permuted by the converter)
ARCHITECTURES = {"llama": ("LlamaForCausalLM", True), "qwen2": ("Qwen2ForCausalLM", False)}

_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class GGUFCheckpoint:
    def __init__(self, path: Path) -> None:
        import gguf

        self.path = path
        try:
            self.reader = gguf.GGUFReader(str(path))
        except Exception as e:  # truncated files fail inside numpy's memmap or the header parser
            raise ValueError(f"model: cannot read {path} as GGUF ({type(e).__name__}: {e})") from None
        arch = self.field("general.architecture")
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"model: unsupported GGUF architecture {arch!r} in {path}; lmx reads {sorted(ARCHITECTURES)}"
            )
        self.arch = arch
        self.hf_arch, self.permuted = ARCHITECTURES[arch]
        self.config = self._config()

    def field(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def _config(self) -> dict[str, Any]:
        a = self.arch

        def need(key: str) -> Any:
            value = self.field(f"{a}.{key}")
            if value is None:
                raise ValueError(f"model: GGUF file {self.path} lacks the metadata field '{a}.{key}'")
            return value

        heads = int(need("attention.head_count"))
        hidden = int(need("embedding_length"))
        tokens = self.reader.fields.get("tokenizer.ggml.tokens")
        vocab = self.field(f"{a}.vocab_size") or (len(tokens.data) if tokens is not None else None)
        config: dict[str, Any] = {
            "architectures": [self.hf_arch],
            "hidden_size": hidden,
            "intermediate_size": int(need("feed_forward_length")),
            "num_hidden_layers": int(need("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self.field(f"{a}.attention.head_count_kv", heads)),
            "head_dim": int(self.field(f"{a}.attention.key_length") or hidden // heads),
            "max_position_embeddings": int(need("context_length")),
            "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self.field(f"{a}.rope.freq_base", 10000.0)),
            "vocab_size": int(vocab) if vocab else None,
            "tie_word_embeddings": not any(t.name == "output.weight" for t in self.reader.tensors),
            "eos_token_id": self.field("tokenizer.ggml.eos_token_id"),
            "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
        }
        scaling = self.field(f"{a}.rope.scaling.type")
        if scaling and scaling != "none":
            config["rope_scaling"] = {
                "rope_type": scaling,
                "factor": float(self.field(f"{a}.rope.scaling.factor", 1.0)),
            }
        return config

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        import gguf

        heads, kv_heads = self.config["num_attention_heads"], self.config["num_key_value_heads"]
        for t in self.reader.tensors:
            name = _hf_name(t.name)
            if name is None:
                continue
            try:
                data = gguf.quants.dequantize(t.data, t.tensor_type)
            except Exception as e:
                raise ValueError(
                    f"weights: cannot dequantise {t.name!r} ({t.tensor_type.name}) of {self.path}: {e}"
                ) from None
            array = np.asarray(data, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
            if not array.flags.writeable:  # unquantised tensors come back as views of the read-only memmap
                array = array.copy()
            tensor = torch.from_numpy(array)
            if self.permuted and name.endswith("q_proj.weight"):
                tensor = _unpermute(tensor, heads)
            elif self.permuted and name.endswith("k_proj.weight"):
                tensor = _unpermute(tensor, kv_heads)
            yield name, tensor


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TENSOR_NAMES:
        return _TENSOR_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def _unpermute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    # llama.cpp: w.reshape(H, 2, D/2, in).swapaxes(1, 2) turned halves into pairs; swap back.
    rows = weight.shape[0]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
