"""Turn each sequence's fp32 logits into its next token: greedy or sampled, with the processors of transformers.

Each request has its own ``torch.Generator`` (seeded by ``random_seed``), so its tokens do not depend on what else
is in the batch. Processor order follows transformers' ``generate``: repetition penalty, temperature, top-k,
top-p. Logprobs are those of the model (before any processor), as vLLM reports them.
"""

from __future__ import annotations

import torch

from .sequence import Sequence


class Sampler:
    def __init__(self) -> None:
        self._generators: dict[int, torch.Generator] = {}

    def forget(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """``logits [N, V]`` fp32, one row per sequence -> N token ids (appends logprobs to sequences asking)."""
        if all(_is_plain_greedy(s) for s in seqs):
            return logits.argmax(dim=-1).tolist()
        return [self._sample_one(row, seq) for row, seq in zip(logits, seqs)]

    def _sample_one(self, logits: torch.Tensor, seq: Sequence) -> int:
        params = seq.params
        raw_logprobs = torch.log_softmax(logits, dim=-1) if params.logprobs is not None else None
        if params.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, seq.token_ids, params.repetition_penalty)
        if params.sampling:
            token = int(torch.multinomial(filtered_probs(logits, params), 1, generator=self._generator(seq)))
        else:
            token = int(logits.argmax())
        if raw_logprobs is not None:
            top = {}
            if params.logprobs > 0:
                values, ids = raw_logprobs.topk(params.logprobs)
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


def filtered_probs(logits: torch.Tensor, params) -> torch.Tensor:
    """Temperature, top-k and top-p (transformers' warpers), then softmax: the distribution to sample from."""
    logits = logits / max(params.temperature, 1e-6)
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - params.top_p)
        remove[-1] = False  # keep at least the most likely token
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return torch.softmax(logits, dim=-1)
