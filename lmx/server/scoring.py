"""Per-token prompt logprobs (OpenAI's ``echo`` + ``logprobs``, lm-eval's loglikelihood) on the engine's scoring path.

A scoring request is an engine perplexity request with ``prompt_logprobs=k``: it is batched, chunked, preempted and
session-length checked like any other request, and its sequence collects each token's logprob and the top ``k``.
"""

from __future__ import annotations

# Logprob of a token: (its logprob, {token id: logprob} of the top k tokens at that position).
TokenLogprob = tuple[float, dict[int, float]]


class PromptScorer:
    """``add`` queues a scoring request on an ``LLMEngine``; ``result`` reads it when finished.

    Not thread-safe by itself: call it from the thread that steps the engine.
    """

    def __init__(self, engine) -> None:
        self.engine = engine

    def add(self, input_ids: list[int], top_k: int = 0):
        """Queue ``input_ids`` (>= 2 tokens) for scoring; returns the engine's ``Sequence``."""
        return self.engine.add_perplexity_request(input_ids, prompt_logprobs=top_k)

    def result(self, seq) -> list[TokenLogprob]:
        """Logprobs of tokens 1..n-1 of a finished scoring request."""
        assert len(seq.prompt_token_logprobs) == seq.num_tokens - 1, "scoring request not finished"
        return list(seq.prompt_token_logprobs)

    def forget(self, seq) -> None:
        """Nothing to release: the scores live on the sequence (kept for callers that abort requests)."""
