"""Turn each sequence's fp32 logits into its next token: greedy or sampled, with the processors of transformers.

Each request has its own ``torch.Generator`` (seeded by ``random_seed``), so its tokens do not depend on what else
is in the batch. Processor order follows transformers' ``generate``: repetition penalty, temperature, top-k,
top-p. Logprobs are those of the model (before any processor), as vLLM reports them.

Sampling fails per sequence, never per batch: a processor that raises, or leaves a row with NaN, +inf or no
finite logit, ends only that sequence (``sample`` returns ``None`` for it and sets ``seq.error``, naming the
parameter of the stage that failed); every other row is sampled exactly as it would be alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import RequestError
from .sequence import Sequence


class SamplingError(RequestError):
    """One sequence's sampling failed; ``param`` is the request field responsible."""


class Sampler:
    def __init__(self) -> None:
        self._generators: dict[int, torch.Generator] = {}

    def forget(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int | None]:
        """``logits [N, V]`` fp32, one row per sequence -> N token ids, ``None`` where that sequence's sampling
        failed (its ``error`` says why). Appends logprobs to the sequences that ask for them."""
        if all(_is_plain_greedy(s) for s in seqs):
            return logits.argmax(dim=-1).tolist()
        tokens: list[int | None] = []
        for row, seq in zip(logits, seqs):
            try:
                tokens.append(self._sample_one(row, seq))
            except SamplingError as e:
                seq.error, seq.error_param = str(e), e.param
                tokens.append(None)
        return tokens

    def _sample_one(self, logits: torch.Tensor, seq: Sequence) -> int:
        params = seq.params
        raw_logprobs = torch.log_softmax(logits, dim=-1) if params.logprobs is not None else None
        if params.repetition_penalty != 1.0:
            logits = _stage("repetition_penalty", params.repetition_penalty,
                            lambda: apply_repetition_penalty(logits, seq.token_ids, params.repetition_penalty))  # fmt: skip
        if params.sampling:
            generator = _stage("random_seed", params.random_seed, lambda: self._generator(seq), check=False)
            logits = _stage("temperature", params.temperature, lambda: apply_temperature(logits, params.temperature))
            logits = _stage("top_k", params.top_k, lambda: apply_top_k(logits, params.top_k))
            logits = _stage("top_p", params.top_p, lambda: apply_top_p(logits, params.top_p))
            probs = torch.softmax(logits, dim=-1)
            token = _stage("sampling", None, lambda: int(torch.multinomial(probs, 1, generator=generator)), check=False)
        else:
            token = int(logits.argmax())
        if raw_logprobs is not None:
            top = {}
            if params.logprobs > 0:
                k = min(params.logprobs, raw_logprobs.numel())
                values, ids = raw_logprobs.topk(k)
                top = dict(zip(ids.tolist(), values.tolist()))
            seq.logprobs.append((float(raw_logprobs[token]), top))
        return token

    def _generator(self, seq: Sequence) -> torch.Generator:
        gen = self._generators.get(seq.seq_id)
        if gen is None:
            gen = torch.Generator(device=torch.device("cpu"))
            seed = seq.params.random_seed
            gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
            self._generators[seq.seq_id] = gen
        return gen


def _stage(field: str, value, run: Callable, *, check: bool = True):
    """Run one sampling stage of one sequence; any failure (or a row no distribution can come from) becomes a
    ``SamplingError`` naming ``field``, the request parameter the stage applies."""
    shown = "" if value is None else f" {value!r}"
    try:
        out = run()
    except Exception as e:
        raise SamplingError(field, f"{field}:{shown} made sampling fail ({type(e).__name__}: {e})") from None
    if check:
        bad = torch.isnan(out).any() or torch.isposinf(out).any() or not torch.isfinite(out).any()
        if bad:
            raise SamplingError(field, f"{field}:{shown} left logits with NaN, +inf or no finite value to sample from")
    return out


def _is_plain_greedy(seq: Sequence) -> bool:
    p = seq.params
    return not p.sampling and p.repetition_penalty == 1.0 and p.logprobs is None


def apply_repetition_penalty(logits: torch.Tensor, token_ids: list[int], penalty: float) -> torch.Tensor:
    """transformers' ``RepetitionPenaltyLogitsProcessor``: divide positive logits, multiply negative ones."""
    ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long, device=logits.device)
    seen = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / max(temperature, 1e-6)


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    if not 0 < top_k < logits.numel():
        return logits
    kth = torch.topk(logits, top_k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[-1] = False  # keep at least the most likely token
    return logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))


def filtered_probs(logits: torch.Tensor, params) -> torch.Tensor:
    """Temperature, top-k and top-p (transformers' warpers), then softmax: the distribution to sample from."""
    logits = apply_top_p(apply_top_k(apply_temperature(logits, params.temperature), params.top_k), params.top_p)
    return torch.softmax(logits, dim=-1)
