"""RoPE configuration: what the rotary kernels need to know about a model's position encoding.

One frozen dataclass, ``RopeConfig``, carries every scaling type that Hugging Face transformers implements in
``modeling_rope_utils.py`` and that lmx supports (``default``, ``linear``, ``dynamic``, ``yarn``, ``llama3``).
It is built from a transformers config (either spelling: legacy ``rope_scaling`` + ``rope_theta`` or the newer
``rope_parameters``) or by hand, and it packs itself into the flat parameter list the C++ op takes, by the field
names the extension exports (``lmx.ops.rope_param_fields()``). It also holds the one rule for which length sets a
sequence's base (``rope_seq_len``, ``rope_seq_len_runs``), so the engine never looks at the scaling type.

The arithmetic itself lives in one place, ``csrc/rope_math.h``, shared by the CPU and CUDA kernels; the pure-PyTorch
reference (``lmx.reference``) mirrors it line by line.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

SCALING_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
# Index of each scaling type in the C++ enum (csrc/rope_math.h: RopeScaling).
_SCALING_CODE = {name: i for i, name in enumerate(SCALING_TYPES)}


# Numeric fields that must be finite (None allowed where the field is optional).
_FLOAT_FIELDS = (
    "base",
    "factor",
    "max_position_embeddings",
    "original_max_position_embeddings",
    "low_freq_factor",
    "high_freq_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "attention_factor",
)


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding of one model.

    Attributes:
        rotary_dim: number of leading channels of each head that are rotated (``head_dim`` unless the model uses
            partial rotary); must be even.
        base: ``rope_theta``.
        scaling_type: one of ``SCALING_TYPES``.
        factor: the scaling factor of ``linear``, ``dynamic``, ``yarn`` and ``llama3``.
        max_position_embeddings: trained context of the model; ``dynamic`` rescales the base past it.
        original_max_position_embeddings: ``yarn`` / ``llama3``: the context the base model was trained on.
        low_freq_factor, high_freq_factor: ``llama3``.
        beta_fast, beta_slow, mscale, mscale_all_dim, attention_factor, truncate: ``yarn``.
        is_neox: ``True`` rotates halves (Llama / Hugging Face "rotate_half"), ``False`` rotates adjacent pairs
            (GPT-J "interleaved").
    """

    rotary_dim: int
    base: float = 10000.0
    scaling_type: str = "default"
    factor: float = 1.0
    max_position_embeddings: int = 2048
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    truncate: bool = True
    is_neox: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rotary_dim, int) or self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim: expected a positive even int, got {self.rotary_dim!r}")
        if self.scaling_type not in _SCALING_CODE:
            raise ValueError(f"scaling_type: expected one of {SCALING_TYPES}, got {self.scaling_type!r}")
        for field in _FLOAT_FIELDS:
            value = getattr(self, field)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{field}: expected a finite number, got {value!r}")
        if not (self.base > 1.0):
            raise ValueError(f"base: expected rope_theta > 1, got {self.base!r}")
        if self.scaling_type != "default" and not (self.factor > 0):
            raise ValueError(f"factor: expected > 0 for scaling_type={self.scaling_type!r}, got {self.factor!r}")
        if self.scaling_type == "dynamic" and self.factor < 1.0:
            raise ValueError(f"factor: dynamic NTK needs factor >= 1, got {self.factor!r}")
        if self.scaling_type == "dynamic" and self.rotary_dim <= 2:  # the base's exponent is d / (d - 2)
            raise ValueError(f"rotary_dim: dynamic NTK needs rotary_dim > 2, got {self.rotary_dim!r}")
        if self.max_position_embeddings <= 0:
            raise ValueError(f"max_position_embeddings: expected > 0, got {self.max_position_embeddings!r}")
        if self.scaling_type in ("yarn", "llama3") and not self.original_max_position_embeddings:
            raise ValueError(
                f"original_max_position_embeddings: required for scaling_type={self.scaling_type!r}, got "
                f"{self.original_max_position_embeddings!r}"
            )
        if self.original_max_position_embeddings is not None and self.original_max_position_embeddings <= 0:
            raise ValueError(
                f"original_max_position_embeddings: expected > 0, got {self.original_max_position_embeddings!r}"
            )
        if self.scaling_type == "yarn":
            for field in ("beta_fast", "beta_slow"):
                if not getattr(self, field) > 0:
                    raise ValueError(f"{field}: expected > 0 for scaling_type='yarn', got {getattr(self, field)!r}")
        if self.scaling_type == "llama3" and not self.low_freq_factor > 0:
            raise ValueError(f"low_freq_factor: expected > 0, got {self.low_freq_factor!r}")
        if self.scaling_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor: expected > low_freq_factor ({self.low_freq_factor}), got {self.high_freq_factor}"
            )

    # -- derived values ------------------------------------------------------------------------------------------

    @property
    def yarn_attention_factor(self) -> float:
        """The factor yarn multiplies cos and sin by (1.0 for every other type), as transformers computes it."""
        if self.scaling_type != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return float(self.attention_factor)

        def get_mscale(scale: float, mscale: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

        if self.mscale and self.mscale_all_dim:
            return get_mscale(self.factor, self.mscale) / get_mscale(self.factor, self.mscale_all_dim)
        return get_mscale(self.factor)

    @property
    def base_depends_on_length(self) -> bool:
        """Whether a sequence's length changes its base (dynamic NTK): then the ops need each sequence's
        ``rope_seq_len``."""
        return self.scaling_type == "dynamic"

    @property
    def context_len(self) -> int:
        """Tokens this position encoding is configured to reach: ``max_position_embeddings``, times ``factor`` under
        dynamic NTK (the one scaling that stretches a model past its trained context at run time; configs of the
        others already state the extended length)."""
        if self.base_depends_on_length:
            return int(self.max_position_embeddings * self.factor)
        return int(self.max_position_embeddings)

    @staticmethod
    def rope_seq_len(prompt_len: int, position: int) -> int:
        """The length that sets the base of the token at ``position`` of a sequence with a ``prompt_len``-token
        prompt (DESIGN §3, hf mode): the prompt length for every prompt token, also when the prompt is prefilled
        in chunks; ``position + 1`` for a generated token, also when a preempted sequence recomputes it."""
        return prompt_len if position < prompt_len else position + 1

    def rope_seq_len_runs(self, prompt_len: int, start: int, end: int) -> list[tuple[int, int]]:
        """``(num_tokens, rope_seq_len)`` runs covering positions ``start..end-1`` of one sequence, each run one
        base: what the ops' ``cu_seqlens`` / ``rope_seq_lens`` take for that stretch of tokens.

        Runs that share a base are merged: without dynamic scaling, or at lengths up to
        ``max_position_embeddings``, every length gives the unscaled base.
        """
        if end <= prompt_len:
            return [(end - start, prompt_len)]
        if end - start == 1:
            return [(1, self.rope_seq_len(prompt_len, start))]
        runs: list[list[int]] = []  # [num_tokens, rope_seq_len, base key]
        for p in range(start, end):
            seq_len = self.rope_seq_len(prompt_len, p)
            key = seq_len if self.base_depends_on_length and seq_len > self.max_position_embeddings else 0
            if runs and runs[-1][2] == key:
                runs[-1][0] += 1
            else:
                runs.append([1, seq_len, key])
        return [(n, seq_len) for n, seq_len, _ in runs]

    def dynamic_base(self, seq_len: int) -> float:
        """The dynamic-NTK base for a sequence of ``seq_len`` tokens (DESIGN §3); ``base`` for other types."""
        if self.scaling_type != "dynamic" or seq_len <= self.max_position_embeddings:
            return self.base
        d = self.rotary_dim
        ratio = self.factor * seq_len / self.max_position_embeddings - (self.factor - 1)
        try:
            return self.base * ratio ** (d / (d - 2))
        except OverflowError:  # an astronomically long sequence: the kernels' double pow gives inf too
            return math.inf

    def param_values(self) -> dict[str, float]:
        """The values of the ops' ``rope_params``, by the field names of ``csrc/checks.cpp: kRopeFields``."""
        return {
            "scaling_type": float(_SCALING_CODE[self.scaling_type]),
            "base": float(self.base),
            "factor": float(self.factor),
            "max_position_embeddings": float(self.max_position_embeddings),
            "original_max_position_embeddings": float(
                self.original_max_position_embeddings or self.max_position_embeddings
            ),
            "low_freq_factor": float(self.low_freq_factor),
            "high_freq_factor": float(self.high_freq_factor),
            "beta_fast": float(self.beta_fast),
            "beta_slow": float(self.beta_slow),
            "attention_factor": float(self.yarn_attention_factor),
            "truncate": 1.0 if self.truncate else 0.0,
        }

    @functools.cached_property
    def packed(self) -> list[float]:
        """``param_values()`` in the order the C++ op reads them, ``lmx.ops.rope_param_fields()`` (computed once:
        the ops read it on every call)."""
        from .ops import rope_param_fields  # the extension; lmx.rope itself imports without it

        values = self.param_values()
        fields = rope_param_fields()
        if set(fields) != set(values):
            raise RuntimeError(
                f"lmx._C and lmx.rope disagree on the RoPE parameters: C++ {sorted(fields)}, Python {sorted(values)}"
            )
        return [values[name] for name in fields]

    # -- construction --------------------------------------------------------------------------------------------

    @classmethod
    def from_hf_config(
        cls, config: Any, *, rope_scaling_factor: float | None = None, rope_scaling: Mapping[str, Any] | None = None
    ) -> RopeConfig:
        """Build from a transformers config object or its ``config.json`` dict.

        Reads both spellings: ``rope_parameters`` (transformers 5) and ``rope_theta`` + ``rope_scaling`` (older).
        ``rope_scaling`` overrides what the config says; ``rope_scaling_factor > 1`` is LMDeploy's shortcut for
        ``{"rope_type": "dynamic", "factor": rope_scaling_factor}``.
        """
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        num_heads = get("num_attention_heads")
        head_dim = get("head_dim") or (get("hidden_size") // num_heads if num_heads else None)
        if not head_dim:
            raise ValueError("config: expected head_dim or hidden_size and num_attention_heads, got neither")
        max_pos = get("max_position_embeddings")
        if not max_pos:
            raise ValueError("config: expected max_position_embeddings, got none")

        params: dict[str, Any] = {}
        rp = get("rope_parameters")
        if isinstance(rp, Mapping) and "rope_theta" in rp or isinstance(rp, Mapping) and "rope_type" in rp:
            params.update(rp)
        legacy = get("rope_scaling")
        if isinstance(legacy, Mapping):
            params.update(legacy)
        if "rope_theta" not in params and get("rope_theta") is not None:
            params["rope_theta"] = get("rope_theta")
        if rope_scaling:
            params.update(rope_scaling)
        elif rope_scaling_factor is not None and rope_scaling_factor > 1.0:
            params.update({"rope_type": "dynamic", "factor": float(rope_scaling_factor)})

        rope_type = params.get("rope_type", params.get("type", "default")) or "default"
        partial = params.get("partial_rotary_factor", get("partial_rotary_factor", 1.0)) or 1.0
        rotary_dim = int(head_dim * partial)
        kwargs: dict[str, Any] = dict(
            rotary_dim=rotary_dim,
            base=float(params.get("rope_theta", 10000.0)),
            scaling_type=rope_type,
            factor=float(params.get("factor", 1.0) or 1.0),
            max_position_embeddings=int(max_pos),
        )
        if rope_type == "yarn":
            factor = params.get("factor")
            orig = params.get("original_max_position_embeddings") or max_pos
            if factor is None:
                factor = max_pos / orig
            kwargs.update(
                factor=float(factor),
                original_max_position_embeddings=int(orig),
                beta_fast=float(params.get("beta_fast") or 32),
                beta_slow=float(params.get("beta_slow") or 1),
                mscale=float(params.get("mscale") or 0.0),
                mscale_all_dim=float(params.get("mscale_all_dim") or 0.0),
                attention_factor=params.get("attention_factor"),
                truncate=bool(params.get("truncate", True)),
            )
        elif rope_type == "llama3":
            kwargs.update(
                original_max_position_embeddings=int(params["original_max_position_embeddings"]),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
            )
        elif rope_type not in SCALING_TYPES:
            raise ValueError(f"rope_scaling: unsupported rope_type {rope_type!r}; lmx supports {SCALING_TYPES}")
        return cls(**kwargs)
