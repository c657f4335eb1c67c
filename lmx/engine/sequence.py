"""One request as the scheduler sees it: token ids, how many are in the cache, when to stop. No tensors."""

from __future__ import annotations

import dataclasses
import enum
import itertools
from typing import Any

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclasses.dataclass(eq=False)
class Sequence:
    """A generation request (``perplexity=False``) or a perplexity request (scored, never extended).

    ``token_ids`` holds the prompt followed by the generated tokens. ``num_computed_tokens`` of them have their
    keys and values in the cache. ``num_prompt_tokens`` never changes, also across preemption: it fixes the
    dynamic-NTK base of the prompt (DESIGN §3, ``hf`` mode), and a recomputed sequence rotates its generated
    tokens as they were rotated when first decoded.

    ``num_computed_tokens`` starts at the length of the cached prefix when the block manager found one (prefix
    caching): those tokens' keys and values are in blocks other sequences computed.
    """

    token_ids: list[int]
    max_len: int  # stop (finish_reason "length") when len(token_ids) reaches this
    stop_token_ids: frozenset[int] = frozenset()
    perplexity: bool = False
    params: Any = None  # the request's GenerationConfig (None for perplexity)
    seq_id: int = dataclasses.field(default_factory=lambda: next(_seq_ids))
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    # finish_reason "error": why, naming the request's field ("repetition_penalty: ..."); nothing else failed.
    error: str | None = None
    error_param: str | None = None  # that field's name, as data
    num_preemptions: int = 0
    # Prompt (and, after a preemption, generated) tokens taken from the prefix cache at the last admission.
    num_cached_tokens: int = 0
    # The names of the sequence's full blocks (BlockManager._hashes), computed once and kept across preemption.
    block_hashes: list[bytes] = dataclasses.field(default_factory=list, repr=False)
    # Generation: per generated token, (logprob of the chosen token, {token: logprob} of the top k) when asked.
    logprobs: list[tuple[float, dict[int, float]]] = dataclasses.field(default_factory=list)
    # Perplexity: sum of the negative log-likelihoods of tokens 1..n-1 and how many were scored.
    nll_sum: float = 0.0
    nll_count: int = 0
    # Perplexity with prompt_logprobs=k (OpenAI's echo + logprobs): entry p is (logprob of token p + 1,
    # {token: logprob} of the top k at that position); None keeps only the sums.
    prompt_logprobs: int | None = None
    prompt_token_logprobs: list[tuple[float, dict[int, float]]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def reset_for_recompute(self) -> None:
        """Preemption: the sequence's hold on its blocks is gone, so every token is recomputed on readmission
        (except those still in the prefix cache then)."""
        self.num_computed_tokens = 0
        self.nll_sum, self.nll_count = 0.0, 0
        self.prompt_token_logprobs.clear()
        self.num_preemptions += 1
        self.status = SequenceStatus.WAITING


@dataclasses.dataclass
class ScheduledChunk:
    """``num_tokens`` tokens of ``seq`` starting at ``seq.num_computed_tokens``, run in one step."""

    seq: Sequence
    num_tokens: int

    @property
    def start(self) -> int:
        return self.seq.num_computed_tokens

    @property
    def needs_sample(self) -> bool:
        """The chunk reaches the last token of a generation request, so a new token is sampled from it."""
        return not self.seq.perplexity and self.start + self.num_tokens == self.seq.num_tokens
