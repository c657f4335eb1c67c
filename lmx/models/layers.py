"""Pieces every decoder model shares: the model config, the per-step attention metadata and the attention call.

Models compute in the weights' dtype and call ``lmx.ops`` for RoPE, the KV-cache write and paged attention.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import numbers
import operator
import os
import statistics
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from lmx import ops
from lmx.rope import RopeConfig

# The head sizes the paged-attention kernels are compiled for (kHeadDims in csrc/checks.h; a test keeps the two
# equal), checked when a model's config is read so a bad model fails at load time, not at its first request.
SUPPORTED_HEAD_DIMS = (16, 32, 64, 80, 96, 112, 128, 160, 192, 256)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What a decoder needs from ``config.json`` (or GGUF metadata), validated once."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    sliding_window: int
    rope: RopeConfig

    @classmethod
    def from_dict(
        cls,
        config: Mapping[str, Any],
        architecture: str,
        *,
        rope_scaling_factor: float | None = None,
        rope_scaling: Mapping[str, Any] | None = None,
        attention_bias: bool | None = None,
    ) -> ModelConfig:
        def need(key: str) -> Any:
            if config.get(key) is None:
                raise ValueError(f"config: {architecture} needs the field {key!r}, which is missing")
            return config[key]

        def positive(key: str, value: Any = None) -> int:
            value = need(key) if value is None else value
            try:
                number = operator.index(value)  # ints, numpy ints from GGUF metadata; never bools or floats
            except TypeError:
                number = None
            if isinstance(value, bool) or number is None or number < 1:
                raise ValueError(f"config: {key}: expected a positive integer, got {value!r}")
            return number

        hidden_size, num_heads = positive("hidden_size"), positive("num_attention_heads")
        vocab_size, intermediate_size = positive("vocab_size"), positive("intermediate_size")
        num_layers, max_positions = positive("num_hidden_layers"), positive("max_position_embeddings")
        if hidden_size % num_heads and not config.get("head_dim"):
            raise ValueError(f"config: hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}")
        num_kv_heads = positive("num_key_value_heads", config.get("num_key_value_heads") or num_heads)
        if num_heads % num_kv_heads:
            raise ValueError(
                f"config: num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})"
            )
        head_dim = positive("head_dim", config.get("head_dim") or hidden_size // num_heads)
        if head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"config: head_dim: the attention kernels support {list(SUPPORTED_HEAD_DIMS)}, "
                             f"got {head_dim}")  # fmt: skip
        window = config.get("sliding_window")
        if window is not None and (isinstance(window, bool) or not hasattr(window, "__index__") or window < 0):
            raise ValueError(f"config: sliding_window: expected a positive integer or null, got {window!r}")
        eps = config.get("rms_norm_eps", 1e-6)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1:
            raise ValueError(f"config: rms_norm_eps: expected a small positive number, got {eps!r}")
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config: hidden_act: lmx supports 'silu', got {act!r}")
        use_window = config.get("use_sliding_window", True) and window  # Qwen2 ships a window it does not use
        return cls(
            architecture=architecture,
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(eps),
            max_position_embeddings=max_positions,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False) if attention_bias is None else attention_bias),
            sliding_window=int(window) if use_window else -1,
            rope=RopeConfig.from_hf_config(config, rope_scaling_factor=rope_scaling_factor, rope_scaling=rope_scaling),
        )


@dataclasses.dataclass
class ForwardContext:
    """Metadata of one engine step, shared by every layer (built once per step by the model runner).

    The T tokens of the step are packed; B sequences. RoPE has its own packing into S segments, each with one
    dynamic-NTK length: a sequence is usually one segment, but a recomputed sequence's generated tokens each keep
    the length they were decoded with (DESIGN §3, ``hf`` mode).
    """

    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64, cache slot of each token
    rope_cu_seqlens: torch.Tensor  # [S + 1] int32, RoPE segments
    rope_seq_lens: torch.Tensor  # [S] int64, the length that sets each segment's dynamic base
    block_tables: torch.Tensor  # [B, max_blocks] int32
    seq_lens: torch.Tensor  # [B] int32, tokens in the cache per sequence, this step's included
    cu_seqlens_q: torch.Tensor  # [B + 1] int32, this step's tokens of each sequence


# CPUs without native bf16 matmul (AVX2, AVX-512 without BF16) run a bf16 GEMM several times slower than an fp32
# one. From this many rows on (prefill), the bf16 weight is widened to fp32 for the product: the same fp32
# accumulation and one rounding to bf16, about 3x faster. Decode keeps the bf16 GEMV (it is bandwidth-bound).
_WIDEN_BF16_MIN_ROWS = 128


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); Linux /proc/cpuinfo, else False."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


_WIDEN_BF16 = not cpu_has_native_bf16()

# CPU threading of a forward pass. Each element-wise op (RMSNorm's five, SiLU, the residual adds, casts) is a
# fork/join of the intra-op thread pool around well under a millisecond of work; when the cores are shared, waking
# the other threads costs more than the op (measured on a busy 2-core machine: a [2048, 576] multiply took 17 ms
# on two threads against 0.07 ms on one; a one-row bf16 GEMV 17 ms: a woken thread waits for the scheduler's tick,
# 4 ms here). ``kernel_threads`` runs a CPU forward on one thread and gives the GEMMs and the attention kernels
# (``all_threads``) every thread again.
# Decode-sized steps (under ``_PARALLEL_MIN_TOKENS`` tokens) read the weights and K/V (0.9 GB a token for
# SmolLM2-135M in fp32 at an 8k context): on 2 quiet cores their GEMVs and attention run twice as fast on both
# (attention 23.5 -> 13.0 ms a step, oneDNN's GEMVs 29 -> 45 GB/s), on cores other jobs keep busy 20 times slower
# (each fork/join waits for a 4 ms tick: a step took 1.2 s against 54 ms on one thread). So in such steps only ops
# that read ``_PARALLEL_MIN_BYTES`` may fork (a tiny model's never do), and ``_DecodeThreads`` times them per
# byte both ways, per GEMM size and for attention, and keeps the faster, trying the other way for a few calls now
# and then (a single call is too noisy: a woken thread may be late). Both ways give
# the same numbers: the kernels' sums do not depend on the thread count. ``LMX_CPU_DECODE_THREADS=1`` (or =all)
# fixes the choice.
_PARALLEL_MIN_TOKENS = 64
_PARALLEL_MIN_BYTES = 1 << 20
_threads = threading.local()


class _DecodeThreads:
    """One thread or all for one kind of big op in decode-sized steps: whichever ran faster per byte lately.

    Each way keeps its last ``WINDOW`` costs (seconds per byte); the decision compares their medians, so one call
    that waited for a woken thread does not flip it. Every ``interval`` calls the other way is tried for
    ``PROBE_CALLS`` calls in a row (its old costs dropped first); the interval resets to ``PROBE_EVERY`` when the
    probe wins and doubles (up to ``MAX_INTERVAL``) when it loses. The first call runs on one thread (the safe way),
    the next ``PROBE_CALLS`` on all."""

    PROBE_EVERY = 16
    PROBE_CALLS = 4
    WINDOW = 8
    MAX_INTERVAL = 1024

    def __init__(self, fixed: str = "") -> None:
        self.fixed = {"1": False, "all": True}.get(fixed)
        self.costs: dict[bool, collections.deque] = {w: collections.deque(maxlen=self.WINDOW) for w in (False, True)}
        self.current = False  # the way in use
        self.interval = self.PROBE_EVERY
        self.countdown = 2  # the first probe (of all threads) right after the first call
        self.probing = 0  # calls of the other way still to run in the current probe

    def choose(self) -> bool:
        if self.fixed is not None:
            return self.fixed
        if self.probing == 0:
            self.countdown -= 1
            if self.countdown > 0:
                return self.current
            self.probing = self.PROBE_CALLS
            self.costs[not self.current].clear()
        return not self.current

    def record(self, parallel: bool, seconds: float, nbytes: int) -> None:
        if self.fixed is not None:
            return
        self.costs[parallel].append(seconds / nbytes)
        if self.probing == 0 or parallel == self.current:
            return
        self.probing -= 1
        if self.probing > 0:
            return
        kept = statistics.median(self.costs[self.current]) if self.costs[self.current] else math.inf
        probed = statistics.median(self.costs[parallel])
        if probed < kept:  # the other way won: use it, and check the old one again soon
            self.current = parallel
            self.interval = self.PROBE_EVERY
        else:
            self.interval = min(2 * self.interval, self.MAX_INTERVAL)
        self.countdown = self.interval

    def __repr__(self) -> str:
        med = {w: statistics.median(c) if c else None for w, c in self.costs.items()}
        return f"_DecodeThreads(all={self.current}, s/byte one={med[False]}, all={med[True]}, every {self.interval})"


_FIXED_DECODE_THREADS = os.environ.get("LMX_CPU_DECODE_THREADS", "")
# One tuner per GEMM size (qkv, o, gate_up, down and the LM head fork at different costs) and one for attention.
_decode_threads: dict[tuple[str, int], _DecodeThreads] = {}


def _decode_tuner(kind: str, nbytes: int) -> _DecodeThreads:
    key = (kind, nbytes if kind == "gemm" else 0)
    tuner = _decode_threads.get(key)
    if tuner is None:
        tuner = _decode_threads[key] = _DecodeThreads(_FIXED_DECODE_THREADS)
    return tuner


@contextlib.contextmanager
def decode_step(decode_only: bool):
    """Marks the model calls within as one engine step; ``decode_only``: every token is a generated one (no prompt
    token), the only steps whose linear layers may take ``lmx.ops.linear`` (see ``_LMX_GEMV``)."""
    previous = getattr(_threads, "decode_step", None)
    _threads.decode_step = decode_only
    try:
        yield
    finally:
        _threads.decode_step = previous


@contextlib.contextmanager
def kernel_threads(device: torch.device, num_tokens: int):
    """Within: one intra-op thread, except inside ``all_threads`` (CPU only; nested uses are no-ops)."""
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1 or getattr(_threads, "n", None) is not None:
        yield
        return
    _threads.n = n
    _threads.small = num_tokens < _PARALLEL_MIN_TOKENS
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        _threads.n = None


@contextlib.contextmanager
def all_threads(nbytes: int | None = None, kind: str = "gemm"):
    """Every intra-op thread for the ops within (inside ``kernel_threads``; elsewhere a no-op); in a decode-sized
    step only for ops that read ``nbytes >= _PARALLEL_MIN_BYTES``, and only while that is faster."""
    n = getattr(_threads, "n", None)
    if n is None or n == 1:
        yield
        return
    tuner = None
    if _threads.small:
        if nbytes is None or nbytes < _PARALLEL_MIN_BYTES:
            yield
            return
        tuner = _decode_tuner(kind, nbytes)
        if not tuner.choose():
            t0 = time.perf_counter()
            yield
            tuner.record(False, time.perf_counter() - t0, nbytes)
            return
    torch.set_num_threads(n)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if tuner is not None:
            tuner.record(True, time.perf_counter() - t0, nbytes)
        torch.set_num_threads(1)


def _onednn_fp32_linear() -> bool:
    """Whether fp32 CPU linear layers go to oneDNN (``torch.ops.mkldnn._linear_pointwise``) instead of
    ``F.linear`` (MKL's sgemm). Measured on a 2-core AVX-512 AMD EPYC (Zen 5), where MKL runs its AVX2 code: a
    prefill GEMM [2048, 576] x [576, 3072] 2.0-3.6x faster, a decode GEMV 1.7-2.6x (43-45 GB/s against 17 on two
    threads; MKL's sgemv uses one). ``LMX_CPU_GEMM=torch`` keeps ``F.linear``."""
    if os.environ.get("LMX_CPU_GEMM", "onednn") == "torch":
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_FP32 = _onednn_fp32_linear()

# Decode-sized linear layers read their weights once per step: lmx.ops.linear streams them at the memory's speed
# (csrc/cpu/linear.cpp). On a 2-core Zen 5, one row, two threads (bench/ops_cpu.py --linear): fp32 at 47-72 GB/s
# against oneDNN's 20-46 and F.linear's (MKL) 16-19; bf16 3.0-3.4x F.linear (oneDNN). From 4 rows on oneDNN's bf16
# GEMM keeps up (one thread, measured once), so bf16 on a CPU with bf16 units takes it only up to 2 rows; fp16 was
# level with F.linear at one row and 2.4-3x faster at 8 (one thread, measured once). CPUs without bf16 units get the
# kernel that widens bf16 in registers up to 8 rows. LMX_CPU_GEMV=0 turns it off.
# Within an engine step (``decode_step``) only steps whose tokens are all generated ones use it: prompt tokens take
# oneDNN's GEMM whether they are prefilled in one chunk or, after a prefix-cache hit, in a few rows (the chunk size
# still picks the attention kernel, so low bits can differ between the two).
_LMX_GEMV = os.environ.get("LMX_CPU_GEMV", "1") != "0"
_LMX_GEMV_MAX_ROWS = {torch.float32: 8, torch.float16: 8, torch.bfloat16: 2 if cpu_has_native_bf16() else 8}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    with all_threads(weight.numel() * weight.element_size()):
        gemv = getattr(_threads, "decode_step", None) is not False  # a step with prompt tokens keeps the GEMMs
        if (
            gemv
            and _LMX_GEMV
            and x.dim() == 2
            and x.device.type == "cpu"
            and x.shape[0] <= _LMX_GEMV_MAX_ROWS.get(x.dtype, 0)
        ):
            if weight.dtype == x.dtype and weight.is_contiguous():
                return ops.linear(x, weight, bias)
        if _ONEDNN_FP32 and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu":
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        if _WIDEN_BF16 and x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.shape[0] >= _WIDEN_BF16_MIN_ROWS:
            b = None if bias is None else bias.float()
            return F.linear(x.float(), weight.float(), b).to(x.dtype)
        return F.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # As transformers' LlamaRMSNorm: normalise in fp32, round to the input dtype, then scale by the weight.
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class LayerCache(NamedTuple):
    """One layer's paged KV cache: ``k`` and ``v`` ``[num_blocks, block_size, Hkv, D]``, and for a quantized cache the
    scales the ops take as ``k_scales`` / ``v_scales`` (int8: float32 ``[num_blocks, block_size, Hkv, 2]``; fp8:
    float32 ``[Hkv]``; ``None`` for a float cache)."""

    k: torch.Tensor
    v: torch.Tensor
    k_scales: torch.Tensor | None = None
    v_scales: torch.Tensor | None = None


def paged_self_attention(
    qkv: torch.Tensor,  # [T, (Hq + 2 Hkv) * D], the fused projection
    cfg: ModelConfig,
    ctx: ForwardContext,
    cache: LayerCache,
) -> torch.Tensor:  # [T, Hq * D]
    T, D = qkv.shape[0], cfg.head_dim
    q, k, v = qkv.split([cfg.num_heads * D, cfg.num_kv_heads * D, cfg.num_kv_heads * D], dim=-1)
    # Views into qkv, no copies: the kernels take any token and head strides (the last dim is contiguous).
    q = q.view(T, cfg.num_heads, D)
    k = k.view(T, cfg.num_kv_heads, D)
    v = v.view(T, cfg.num_kv_heads, D)
    k_cache, v_cache = cache.k, cache.v
    scales = dict(k_scales=cache.k_scales, v_scales=cache.v_scales)  # quantized caches only
    # About the K/V bytes the attention reads (the block tables' padded width; shapes only, no tensor op)
    kv_bytes = 2 * ctx.block_tables.numel() * math.prod(k_cache.shape[1:]) * k_cache.element_size()
    with all_threads(kv_bytes, kind="attention"):
        ops.rotary_embedding_and_cache(
            q, k, v, k_cache, v_cache, ctx.slot_mapping, ctx.positions, cfg.rope,
            cu_seqlens=ctx.rope_cu_seqlens, rope_seq_lens=ctx.rope_seq_lens, **scales,
        )  # fmt: skip
        out = ops.paged_attention(
            q, k_cache, v_cache, ctx.block_tables, ctx.seq_lens, ctx.cu_seqlens_q, D**-0.5,
            sliding_window=cfg.sliding_window, **scales,
        )  # fmt: skip
    return out.view(T, cfg.num_heads * D)
