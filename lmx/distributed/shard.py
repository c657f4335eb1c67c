"""Megatron-style tensor-parallel sharding of one decoder (no torch.distributed here: the plan only).

Rank ``r`` of ``size`` ranks holds:

- attention: query heads ``[r * Hq/size, (r+1) * Hq/size)`` (column-parallel q), and the KV heads those query
  heads read: ``Hkv/size`` of them when ``size`` divides ``Hkv``; when ``size`` exceeds ``Hkv`` (a multiple of
  it), the one KV head of its query group, replicated on ``size/Hkv`` ranks. Its KV cache holds those heads only.
- ``o_proj``: the matching input columns (row-parallel; one all-reduce of the layer's attention output).
- MLP: ``gate``/``up`` rows ``[r * I/size, (r+1) * I/size)`` (column-parallel), ``down`` the matching columns
  (row-parallel; one all-reduce).
- embeddings, norms and the LM head: replicated (only rank 0 computes logits, so other ranks do not load the
  LM head of an untied model).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # lmx.models imports this module
    from lmx.models.layers import ModelConfig


@dataclasses.dataclass(frozen=True)
class TPShard:
    rank: int = 0
    size: int = 1
    q_start: int = 0  # first query head of this rank
    num_heads: int = 0  # query heads on this rank
    kv_start: int = 0  # first KV head of this rank
    num_kv_heads: int = 0  # KV heads on this rank
    kv_replicas: int = 1  # ranks holding each KV head (> 1 when size > the model's KV heads)
    inter_start: int = 0
    intermediate_size: int = 0

    @classmethod
    def plan(cls, cfg: ModelConfig, rank: int = 0, size: int = 1) -> TPShard:
        """The shard of rank ``rank``; ``ValueError`` naming ``tp`` when ``size`` does not split the model."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"tp: expected an int >= 1, got {size!r}")
        hq, hkv, inter = cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
        if hq % size:
            raise ValueError(f"tp: expected a divisor of the model's num_attention_heads ({hq}), got {size}")
        if hkv % size and size % hkv:
            raise ValueError(
                f"tp: expected a divisor or a multiple of the model's num_key_value_heads ({hkv}) that divides "
                f"num_attention_heads ({hq}), got {size}"
            )
        if inter % size:
            raise ValueError(f"tp: expected a divisor of the model's intermediate_size ({inter}), got {size}")
        q_local = hq // size
        if size <= hkv:
            kv_local, kv_start, replicas = hkv // size, rank * (hkv // size), 1
        else:
            replicas = size // hkv
            kv_local, kv_start = 1, rank // replicas
        i_local = inter // size
        return cls(rank, size, rank * q_local, q_local, kv_start, kv_local, replicas, rank * i_local, i_local)

    def local_config(self, cfg: ModelConfig) -> ModelConfig:
        """``cfg`` with this rank's head and MLP counts (what its attention call and KV cache see)."""
        if self.size == 1:
            return cfg
        return dataclasses.replace(
            cfg, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, intermediate_size=self.intermediate_size
        )

    def describe(self, cfg: ModelConfig) -> str:
        """One line saying how the KV heads are laid out over the ranks."""
        if self.kv_replicas > 1:
            return (
                f"lmx tp: {self.size} ranks > {cfg.num_kv_heads} KV heads: each KV head is replicated on "
                f"{self.kv_replicas} ranks (each rank caches 1 KV head, {self.num_heads} query heads)"
            )
        return (
            f"lmx tp: {self.size} ranks: each holds {self.num_heads} of {cfg.num_heads} query heads and "
            f"{self.num_kv_heads} of {cfg.num_kv_heads} KV heads"
        )

    def slice_rule(self, cfg: ModelConfig, param: str, part: str | None) -> tuple[int, int, int, int] | None:
        """``(dim, start, stop, full)`` of the checkpoint tensor of ``param`` (``part``) this rank keeps
        (``full``: its length along ``dim`` in the checkpoint), or ``None`` when the rank keeps it whole."""
        if self.size == 1:
            return None
        D = cfg.head_dim
        if param in ("qkv", "qkv_bias"):
            if part == "q":
                return 0, self.q_start * D, (self.q_start + self.num_heads) * D, cfg.num_heads * D
            return 0, self.kv_start * D, (self.kv_start + self.num_kv_heads) * D, cfg.num_kv_heads * D
        if param == "o_proj":
            return 1, self.q_start * D, (self.q_start + self.num_heads) * D, cfg.num_heads * D
        if param == "gate_up":
            return 0, self.inter_start, self.inter_start + self.intermediate_size, cfg.intermediate_size
        if param == "down":
            return 1, self.inter_start, self.inter_start + self.intermediate_size, cfg.intermediate_size
        return None
