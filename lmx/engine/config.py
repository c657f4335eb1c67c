"""User-facing configuration of the engine (DESIGN §4), in LMDeploy's names.

Both configs are dataclasses validated in ``__post_init__``: a bad value raises ``ValueError`` / ``TypeError``
naming the field, what was expected and what came, before any request reaches the engine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import RequestError, RequestTypeError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
KV_CACHE_DTYPES = ("auto", "int8", "fp8")


def _cli(default: Any, kind: str, help: str, *, flag: str | None = None, **extra: Any) -> Any:
    """A field with its command-line metadata (``lmx.cli.add_engine_args`` builds every front end's options from
    it): ``kind`` names the parser (``length``, ``positive_int``, ``fraction``, ``choice``, ``bool``, ``rope``...),
    ``flag`` the option when it is not ``--field-name``; ``extra`` goes to argparse (``choices``, ``metavar``)."""
    return dataclasses.field(default=default, metadata={"cli": {"kind": kind, "help": help, "flag": flag, **extra}})


def _check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestTypeError(name, f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise RequestError(name, f"{name}: expected an int >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise RequestError(name, f"{name}: expected an int from {minimum} to {maximum}, got {value!r}")


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestTypeError(name, f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise RequestError(name, f"{name}: expected a finite number, got {value!r}")
    return float(value)


# Ranges a request's sampling parameters must lie in; the server's request models use the same bounds.
SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes without wrapping
REPETITION_PENALTY_RANGE = (0.01, 100.0)  # outside it, dividing logits overflows or wipes out every logit
TEMPERATURE_MAX = 100.0
TOP_K_MAX = 2**31 - 1
LOGPROBS_MAX = 20
MAX_NEW_TOKENS_MAX = 2**31 - 1


@dataclasses.dataclass
class EngineConfig:
    """How the engine runs a model.

    Attributes:
        session_len: the longest sequence (prompt + generated tokens) a request may reach; ``None`` takes the
            model's ``max_position_embeddings`` (times ``rope_scaling_factor`` when that is > 1).
        rope_scaling_factor: LMDeploy's shortcut: a factor > 1 turns on dynamic NTK RoPE with that factor.
        rope_scaling: a ``rope_scaling`` dict that overrides the model's (e.g. ``{"rope_type": "yarn", ...}``).
        max_batch_size: most sequences in flight at once.
        block_size: tokens per KV-cache block (a power of two, 1 to 256).
        cache_max_entry_count: fraction of free memory given to KV blocks when ``num_blocks`` is not set (on the
            CPU the cache is also capped at what ``max_batch_size`` sequences of ``session_len`` need).
        num_blocks: exact number of KV-cache blocks; overrides ``cache_max_entry_count``.
        max_prefill_token_num: most tokens one step prefills (the prefill chunk); longer prompts are chunked.
        max_queued_requests: most requests waiting for a place in the batch; one more raises
            ``EngineBusyError`` (``None``: no limit, the library default; ``lmx serve`` sets one).
        dtype: ``auto`` (the checkpoint's dtype, bf16 for quantised GGUF), ``float32``, ``bfloat16``, ``float16``.
        kv_cache_dtype: ``auto`` (the KV cache in the compute dtype), ``int8`` (per token and kv head,
            asymmetric scale and zero point stored beside each block: about half a bf16 cache, a quarter of an
            fp32 one) or ``fp8`` (float8 e4m3 with per-head scales of 1.0, as vLLM's default). The number of cache
            blocks grows with the smaller bytes per block.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_threads: CPU threads for torch (``None`` leaves torch's default).
        enable_prefix_caching: keep the KV blocks of finished requests and reuse them for a new request that
            starts with the same tokens (same document, next chat turn): only the rest of its prompt is computed.
            Results are unchanged; perplexity requests always compute every token.
    """

    session_len: int | None = _cli(
        None,
        "length",
        "longest prompt + answer in tokens (4k = 4096; default: the model's trained length, times the dynamic factor)",
    )
    rope_scaling_factor: float = _cli(
        0.0,
        "non_negative_float",
        "F > 1 turns on dynamic NTK RoPE with factor F (LMDeploy's option); F <= 1 keeps the model's RoPE",
        metavar="F",
    )
    rope_scaling: Mapping[str, Any] | None = _cli(
        None,
        "rope",
        "the RoPE to run: model (the checkpoint's, default), default (plain RoPE), dynamic:F, linear:F or yarn:F",
        flag="--rope",
        metavar="SPEC",
    )
    max_batch_size: int = _cli(64, "positive_int", "most sequences in flight at once")
    block_size: int = _cli(64, "positive_int", "tokens per KV-cache block")
    cache_max_entry_count: float = _cli(0.8, "fraction", "fraction of free memory for the KV cache (LMDeploy's option)")
    num_blocks: int | None = _cli(None, "positive_int", "KV-cache blocks (default: by memory)")
    max_prefill_token_num: int = _cli(8192, "positive_int", "most tokens prefilled in one step (the prefill chunk)")
    max_queued_requests: int | None = _cli(
        None, "positive_int", "most requests waiting for a place in the batch", metavar="N"
    )
    dtype: str = _cli(
        "auto",
        "choice",
        "compute dtype (auto: the checkpoint's on CUDA, float32 on a CPU without bf16)",
        choices=DTYPES,
    )
    kv_cache_dtype: str = _cli(
        "auto",
        "choice",
        "KV cache format: auto (the compute dtype), int8 (per-token, per-head scale and zero), fp8 (e4m3, scale 1)",
        choices=KV_CACHE_DTYPES,
    )
    device: str = _cli("auto", "choice", "auto: CUDA when available", choices=DEVICES)
    num_threads: int | None = _cli(None, "positive_int", "CPU threads for torch", flag="--threads")
    enable_prefix_caching: bool = _cli(
        True, "bool", "reuse the KV blocks of earlier requests' shared prefixes", flag="--prefix-caching"
    )

    def __post_init__(self) -> None:
        _check_int("session_len", self.session_len, minimum=1, optional=True)
        factor = _check_number("rope_scaling_factor", self.rope_scaling_factor)
        if factor < 0:
            raise RequestError(
                "rope_scaling_factor", f"rope_scaling_factor: expected >= 0 (> 1 turns on dynamic NTK), got {factor!r}"
            )
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, Mapping):
            raise RequestTypeError(
                "rope_scaling", f"rope_scaling: expected a dict or None, got {type(self.rope_scaling).__name__}"
            )
        _check_int("max_batch_size", self.max_batch_size, minimum=1)
        _check_int("block_size", self.block_size, minimum=1)
        if self.block_size > 256 or self.block_size & (self.block_size - 1):
            raise RequestError(
                "block_size", f"block_size: expected a power of two from 1 to 256, got {self.block_size!r}"
            )
        entry = _check_number("cache_max_entry_count", self.cache_max_entry_count)
        if not 0.0 < entry <= 1.0:
            raise RequestError(
                "cache_max_entry_count", f"cache_max_entry_count: expected a fraction in (0, 1], got {entry!r}"
            )
        _check_int("num_blocks", self.num_blocks, minimum=1, optional=True)
        _check_int("max_prefill_token_num", self.max_prefill_token_num, minimum=1)
        _check_int("max_queued_requests", self.max_queued_requests, minimum=1, optional=True)
        if self.dtype not in DTYPES:
            raise RequestError("dtype", f"dtype: expected one of {DTYPES}, got {self.dtype!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise RequestError(
                "kv_cache_dtype", f"kv_cache_dtype: expected one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}"
            )
        if self.device not in DEVICES:
            raise RequestError("device", f"device: expected one of {DEVICES}, got {self.device!r}")
        _check_int("num_threads", self.num_threads, minimum=1, optional=True)
        if not isinstance(self.enable_prefix_caching, bool):
            raise RequestTypeError(
                "enable_prefix_caching",
                f"enable_prefix_caching: expected a bool, got {type(self.enable_prefix_caching).__name__} "
                f"{self.enable_prefix_caching!r}",
            )


@dataclasses.dataclass
class GenerationConfig:
    """How one request is decoded.

    Attributes:
        max_new_tokens: most tokens to generate (> 0); generation also stops at ``session_len``.
        do_sample: sample (``True``) or take the argmax (``False``). LMDeploy samples whenever ``top_k != 1``; here
            sampling is on when ``do_sample`` is set or ``temperature``/``top_p``/``top_k`` ask for it.
        temperature, top_p, top_k: the usual; ``top_k = 0`` means no top-k cut.
        repetition_penalty: CTRL-style penalty on every token already in the prompt or output, in [0.01, 100]
            (1.0 = off; seed 002 recommends 1.02 for long inputs).
        stop_words: strings that end generation (the stop word is not returned).
        stop_token_ids: token ids that end generation (besides the model's EOS unless ``ignore_eos``).
        ignore_eos: keep generating past EOS.
        random_seed: seed of this request's sampler (0 to 2**64 - 1); the same seed gives the same tokens.
        logprobs: ``None`` for no logprobs; ``k >= 0`` returns the chosen token's logprob and the top ``k``.
    """

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop_words: Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    ignore_eos: bool = False
    random_seed: int | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1, maximum=MAX_NEW_TOKENS_MAX)
        if not isinstance(self.do_sample, bool):
            raise RequestTypeError(
                "do_sample", f"do_sample: expected a bool, got {type(self.do_sample).__name__} {self.do_sample!r}"
            )
        if not 0 <= _check_number("temperature", self.temperature) <= TEMPERATURE_MAX:
            raise RequestError(
                "temperature", f"temperature: expected a value in [0, {TEMPERATURE_MAX:g}], got {self.temperature!r}"
            )
        if not 0.0 < _check_number("top_p", self.top_p) <= 1.0:
            raise RequestError("top_p", f"top_p: expected a value in (0, 1], got {self.top_p!r}")
        _check_int("top_k", self.top_k, minimum=0, maximum=TOP_K_MAX)
        low, high = REPETITION_PENALTY_RANGE
        if not low <= _check_number("repetition_penalty", self.repetition_penalty) <= high:
            raise RequestError(
                "repetition_penalty",
                f"repetition_penalty: expected a value in [{low:g}, {high:g}] (1 = off), got {self.repetition_penalty!r}",
            )
        if isinstance(self.stop_words, str):
            self.stop_words = [self.stop_words]
        if self.stop_words is not None:
            if not all(isinstance(w, str) and w for w in self.stop_words):
                raise RequestTypeError(
                    "stop_words", f"stop_words: expected a list of non-empty strings, got {self.stop_words!r}"
                )
            self.stop_words = list(self.stop_words)
        if isinstance(self.stop_token_ids, int):
            self.stop_token_ids = [self.stop_token_ids]
        if self.stop_token_ids is not None:
            if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
                raise RequestTypeError(
                    "stop_token_ids", f"stop_token_ids: expected a list of ints >= 0, got {self.stop_token_ids!r}"
                )
            self.stop_token_ids = list(self.stop_token_ids)
        if not isinstance(self.ignore_eos, bool):
            raise RequestTypeError("ignore_eos", f"ignore_eos: expected a bool, got {type(self.ignore_eos).__name__}")
        _check_int("random_seed", self.random_seed, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1], optional=True)
        _check_int("logprobs", self.logprobs, minimum=0, maximum=LOGPROBS_MAX, optional=True)

    @property
    def sampling(self) -> bool:
        """Whether this request samples (otherwise greedy)."""
        if self.temperature == 0 or self.top_k == 1:
            return False
        return self.do_sample or self.temperature != 1.0 or self.top_p < 1.0 or self.top_k > 1
