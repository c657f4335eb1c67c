"""InternLM2 / InternLM2.5 (e.g. InternLM2.5-7B-Chat-1M): the Llama decoder with its own weight names and a
packed ``wqkv``.

``attention.wqkv.weight`` is ``[(Hkv * (G + 2) * D), hidden]`` with ``G = Hq / Hkv``: for each KV head, its ``G``
query heads, then its key head, then its value head (InternLM2's ``rearrange(... "(h gs d)" ...)``). Loading
regroups the rows into lmx's ``q | k | v`` layout.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .llama import LlamaForCausalLM


class InternLM2ForCausalLM(LlamaForCausalLM):
    WEIGHT_MAP = (
        (r"model\.tok_embeddings\.weight", "embed", None),
        (r"model\.norm\.weight", "norm", None),
        (r"output\.weight", "lm_head", None),
        (r"model\.layers\.(\d+)\.attention_norm\.weight", "input_norm", None),
        (r"model\.layers\.(\d+)\.ffn_norm\.weight", "post_norm", None),
        (r"model\.layers\.(\d+)\.attention\.wqkv\.([qkv])", "qkv", "qkv"),
        (r"model\.layers\.(\d+)\.attention\.wqkv\.bias_([qkv])", "qkv_bias", "qkv"),
        (r"model\.layers\.(\d+)\.attention\.wo\.weight", "o_proj", None),
        (r"model\.layers\.(\d+)\.feed_forward\.w1\.(gate)", "gate_up", "gate_up"),
        (r"model\.layers\.(\d+)\.feed_forward\.w3\.(up)", "gate_up", "gate_up"),
        (r"model\.layers\.(\d+)\.feed_forward\.w2\.weight", "down", None),
    )

    def map_weight(self, name: str, tensor: torch.Tensor) -> Iterable[tuple[str, torch.Tensor]]:
        if name.endswith("attention.wqkv.weight") or name.endswith("attention.wqkv.bias"):
            c = self.cfg
            group = c.num_heads // c.num_kv_heads
            expected_rows = c.num_kv_heads * (group + 2) * c.head_dim
            if tensor.shape[0] != expected_rows:
                raise ValueError(
                    f"weights: {name!r} has {tensor.shape[0]} rows, the config implies {expected_rows} "
                    f"(num_key_value_heads * (num_attention_heads / num_key_value_heads + 2) * head_dim)"
                )
            packed = tensor.reshape(c.num_kv_heads, group + 2, c.head_dim, *tensor.shape[1:])
            base = name.rsplit(".", 1)[0]
            suffix = "" if name.endswith("weight") else "bias_"
            yield f"{base}.{suffix}q", packed[:, :group].reshape(-1, *tensor.shape[1:])
            yield f"{base}.{suffix}k", packed[:, group].reshape(-1, *tensor.shape[1:])
            yield f"{base}.{suffix}v", packed[:, group + 1].reshape(-1, *tensor.shape[1:])
        elif name.endswith("feed_forward.w1.weight"):
            yield name.replace(".weight", ".gate"), tensor
        elif name.endswith("feed_forward.w3.weight"):
            yield name.replace(".weight", ".up"), tensor
        else:
            yield name, tensor
