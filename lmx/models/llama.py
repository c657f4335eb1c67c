"""The Llama-family decoder (Llama 2/3, Mistral, SmolLM2); Qwen2 and InternLM2 reuse it with other weight names.

Weights are fused at load time: q/k/v into one ``qkv`` matrix and gate/up into one ``gate_up`` matrix, so a layer
runs four matmuls. ``load_weights`` takes ``(name, tensor)`` pairs in Hugging Face naming.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lmx.distributed.comm import all_reduce
from lmx.distributed.shard import TPShard

from .layers import ForwardContext, LayerCache, ModelConfig, kernel_threads, linear, paged_self_attention, rms_norm


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, tp_size: int = 1) -> None:
        """``cfg``: this rank's config (``TPShard.local_config``: its heads and MLP rows); ``tp_size`` ranks sum
        the partial outputs of ``o_proj`` and ``down`` (row-parallel)."""
        super().__init__()
        self.cfg = cfg
        self.tp_size = tp_size
        H, D, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * D
        self.input_norm = nn.Parameter(torch.empty(H))
        self.qkv = nn.Parameter(torch.empty(qkv_rows, H))
        self.qkv_bias = nn.Parameter(torch.empty(qkv_rows)) if cfg.attention_bias else None
        self.o_proj = nn.Parameter(torch.empty(H, cfg.num_heads * D))
        self.post_norm = nn.Parameter(torch.empty(H))
        self.gate_up = nn.Parameter(torch.empty(2 * inter, H))
        self.down = nn.Parameter(torch.empty(H, inter))

    def forward(self, x: torch.Tensor, ctx: ForwardContext, cache: LayerCache):
        eps = self.cfg.rms_norm_eps
        qkv = linear(rms_norm(x, self.input_norm, eps), self.qkv, self.qkv_bias)
        attn = linear(paged_self_attention(qkv, self.cfg, ctx, cache), self.o_proj)
        x = x + all_reduce(attn, self.tp_size)
        gate, up = linear(rms_norm(x, self.post_norm, eps), self.gate_up).chunk(2, dim=-1)
        return x + all_reduce(linear(F.silu(gate) * up, self.down), self.tp_size)


class LlamaForCausalLM(nn.Module):
    # Hugging Face name patterns -> (parameter path, slot): "q"/"k"/"v" and "gate"/"up" land in fused matrices.
    WEIGHT_MAP: tuple[tuple[str, str, str | None], ...] = (
        (r"model\.embed_tokens\.weight", "embed", None),
        (r"model\.norm\.weight", "norm", None),
        (r"lm_head\.weight", "lm_head", None),
        (r"model\.layers\.(\d+)\.input_layernorm\.weight", "input_norm", None),
        (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "post_norm", None),
        (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight", "qkv", "qkv"),
        (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.bias", "qkv_bias", "qkv"),
        (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", "o_proj", None),
        (r"model\.layers\.(\d+)\.mlp\.(gate|up)_proj\.weight", "gate_up", "gate_up"),
        (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", "down", None),
    )

    def __init__(self, cfg: ModelConfig, shard: TPShard | None = None, *, lm_head: bool = True) -> None:
        """``shard``: the tensor-parallel part this process holds (``None``: the whole model); ``lm_head=False``
        leaves out an untied LM head (a tensor-parallel worker never computes logits)."""
        super().__init__()
        self.cfg = cfg  # the whole model's config
        self.shard = TPShard.plan(cfg) if shard is None else shard
        self.local_cfg = self.shard.local_config(cfg)  # this rank's heads and MLP rows (its KV cache's shape)
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(self.local_cfg, self.shard.size) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.empty(cfg.hidden_size))
        self.has_lm_head = lm_head or cfg.tie_word_embeddings
        untied = lm_head and not cfg.tie_word_embeddings
        self.lm_head = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size)) if untied else None
        self._patterns = [(re.compile(p), path, slot) for p, path, slot in self.WEIGHT_MAP]

    # -- forward -------------------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext, kv_caches: list[LayerCache]):
        """``input_ids [T]`` -> final-normed hidden states ``[T, hidden_size]``."""
        with kernel_threads(
            input_ids.device, input_ids.shape[0]
        ):  # element-wise work on one thread, GEMMs and attention on all
            x = F.embedding(input_ids, self.embed)
            for layer, cache in zip(self.layers, kv_caches):
                x = layer(x, ctx, cache)
            return rms_norm(x, self.norm, self.cfg.rms_norm_eps)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden_size]`` -> fp32 logits ``[N, vocab_size]``."""
        if not self.has_lm_head:
            raise RuntimeError("compute_logits: this tensor-parallel worker's model has no LM head (rank 0 samples)")
        weight = self.embed if self.lm_head is None else self.lm_head
        return linear(hidden, weight).float()

    # -- weights -------------------------------------------------------------------------------------------------

    def fused_slices(self, slot: str) -> dict[str, tuple[int, int]]:
        """Row ranges of the parts of a fused matrix (this rank's part of it)."""
        c = self.local_cfg
        if slot == "qkv":
            q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
            return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
        return {"gate": (0, c.intermediate_size), "up": (c.intermediate_size, 2 * c.intermediate_size)}

    def map_weight(self, name: str, tensor: torch.Tensor) -> Iterable[tuple[str, torch.Tensor]]:
        """Hugging Face name -> ``(parameter.path[part], tensor)`` pairs; subclasses split packed tensors here."""
        yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors into the (fused) parameters; raises ``ValueError`` on a missing or misshapen one."""
        loaded: set[str] = set()
        params = dict(self.named_parameters())
        for raw_name, raw_tensor in weights:
            for name, tensor in self.map_weight(raw_name, raw_tensor):
                target = self._resolve(name)
                if target is None:
                    continue  # e.g. rotary_emb.inv_freq, or lm_head.weight of a tied model
                path, part, slot = target
                dest = params[path]
                if part is not None:
                    lo, hi = self.fused_slices(slot)[part]
                    dest = dest[lo:hi]
                rule = self.shard.slice_rule(self.cfg, path.rsplit(".", 1)[-1], part)
                if rule is not None:  # tensor parallel: this rank's rows or columns of the checkpoint tensor
                    dim, start, stop, full = rule
                    expected = list(dest.shape)
                    expected[dim] = full
                    if list(tensor.shape) != expected:
                        raise ValueError(
                            f"weights: {raw_name!r} has shape {tuple(tensor.shape)}, the config implies "
                            f"{tuple(expected)}"
                        )
                    tensor = tensor.narrow(dim, start, stop - start)
                if tuple(tensor.shape) != tuple(dest.shape):
                    raise ValueError(
                        f"weights: {raw_name!r} has shape {tuple(tensor.shape)}, the config implies {tuple(dest.shape)}"
                    )
                with torch.no_grad():
                    dest.copy_(tensor)
                loaded.add(path if part is None else f"{path}[{part}]")
        self._check_complete(loaded)

    def _resolve(self, name: str) -> tuple[str, str | None, str | None] | None:
        for pattern, path, slot in self._patterns:
            m = pattern.fullmatch(name)
            if not m:
                continue
            if path == "lm_head" and self.lm_head is None:
                return None
            prefix = f"layers.{m.group(1)}." if m.groups() else ""
            if prefix and int(m.group(1)) >= self.cfg.num_layers:
                raise ValueError(f"weights: {name!r} names a layer the config does not have ({self.cfg.num_layers})")
            part = m.group(2) if slot else None
            return prefix + path, part, slot
        return None

    def _check_complete(self, loaded: set[str]) -> None:
        expected = set()
        for path, _ in self.named_parameters():
            short = path.rsplit(".", 1)[-1]
            slot = {"qkv": "qkv", "qkv_bias": "qkv", "gate_up": "gate_up"}.get(short)
            expected.update(f"{path}[{p}]" for p in self.fused_slices(slot)) if slot else expected.add(path)
        missing = sorted(expected - loaded)
        if missing:
            shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
            raise ValueError(f"weights: the checkpoint lacks {len(missing)} tensors the model needs: {shown}")
