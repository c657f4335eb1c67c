"""``lmx.pipeline``: LMDeploy's user-facing API over ``LLMEngine`` (text in, text out, streaming, perplexity).

    pipe = pipeline("smollm2-135m", engine_config=EngineConfig(rope_scaling_factor=2.0, session_len=16384))
    pipe("prompt", gen_config=GenerationConfig(max_new_tokens=64)).text
    for r in pipe.stream_infer(["a", "b"]): print(r.index, r.text, end="")
    pipe.get_ppl(input_ids)   # [mean cross-entropy per input]; perplexity = exp of it

A prompt is a string, a chat (a list of ``{"role", "content"}`` messages, which always goes through the chat
template), or a list of token ids. ``do_preprocess=True`` puts string prompts through the chat template too.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from typing import Any

from .config import EngineConfig, GenerationConfig
from .detokenizer import Detokenizer
from .errors import RequestError, RequestTypeError
from .llm_engine import LLMEngine
from .sequence import Sequence


@dataclasses.dataclass
class Response:
    """One request's result (or, from ``stream_infer``, its newest piece: ``text`` and ``token_ids`` are deltas)."""

    text: str
    generate_token_len: int
    input_token_len: int
    finish_reason: str | None = None  # "stop", "length", "abort", "error", or None while running
    error: str | None = None  # finish_reason "error": why, naming the request's field (e.g. "random_seed: ...")
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[tuple[float, dict[int, float]]] | None = None
    index: int = 0


class OutputStream:
    """What a streaming consumer has received of one generation request: ``next()`` returns the new part as a
    ``Response`` delta (``None`` when there is nothing new). Text is released only as far as the sequence's
    ``Detokenizer.stable_len`` (never a tail that may still turn into a stop word, never half a character), so the
    deltas always add up to the finished request's text."""

    def __init__(self, seq: Sequence, detokenizer: Detokenizer | None, index: int = 0) -> None:
        self.seq, self.index = seq, index
        self._detok = detokenizer
        self._sent_tokens = 0
        self._sent_chars = 0
        self.done = False

    def next(self) -> Response | None:
        seq = self.seq
        if self.done:
            return None
        finished = seq.is_finished
        text = ""
        if self._detok is not None:
            stable = self._detok.stable_len(finished)
            text = self._detok.text[self._sent_chars : stable]
            self._sent_chars = max(self._sent_chars, stable)
        start, end = self._sent_tokens, seq.num_output_tokens
        if not text and end == start and not finished:
            return None
        self._sent_tokens = end
        self.done = finished
        return Response(
            text=text,
            generate_token_len=end,
            input_token_len=seq.num_prompt_tokens,
            finish_reason=seq.finish_reason if finished else None,
            error=seq.error if finished else None,
            token_ids=seq.token_ids[seq.num_prompt_tokens + start : seq.num_prompt_tokens + end],
            logprobs=list(seq.logprobs[start:end]) if seq.params.logprobs is not None else None,
            index=self.index,
        )


class Pipeline:
    def __init__(self, model: str | os.PathLike, engine_config: EngineConfig | None = None) -> None:
        self.engine = LLMEngine(model, engine_config)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def session_len(self) -> int:
        return self.engine.session_len

    @property
    def max_sequence_len(self) -> int:
        """The longest sequence (prompt + answer) a request may reach: ``session_len``, or less when the whole KV
        cache holds less."""
        return self.engine.max_sequence_len

    @property
    def max_position_embeddings(self) -> int:
        """The model's trained context length."""
        return self.engine.model_config.max_position_embeddings

    @property
    def num_unfinished(self) -> int:
        """Requests in the engine (waiting or running); safe to read from any thread."""
        scheduler = self.engine.scheduler
        return len(scheduler.waiting) + len(scheduler.running)

    def has_unfinished(self) -> bool:
        return self.engine.scheduler.has_unfinished()

    def metrics(self) -> dict[str, Any]:
        """The engine's state: requests waiting and running, KV blocks, and (when the scheduler and block manager
        report them) prefix-cache statistics and preemptions."""
        scheduler, blocks = self.engine.scheduler, self.engine.block_manager
        out: dict[str, Any] = {
            "waiting": len(scheduler.waiting), "running": len(scheduler.running),
            "num_blocks": blocks.num_blocks, "free_blocks": blocks.num_free_blocks, "block_size": blocks.block_size,
            "session_len": self.session_len, "max_sequence_len": self.max_sequence_len,
            "max_batch_size": scheduler.max_batch_size, "max_queued_requests": scheduler.max_queued_requests,
        }  # fmt: skip
        out.update(scheduler.stats())
        out.update(self.engine.kv_cache_stats())
        return out

    def validate(self, ids: Any, *, name: str = "prompt", perplexity: bool = False) -> list[int]:
        """``ids`` as a list of token ids the engine accepts (``perplexity``: for scoring, which needs 2 tokens and
        no room for an answer); ``RequestError`` naming ``name`` otherwise (``code`` "context_length_exceeded"
        when they do not fit)."""
        return self.engine.validate_prompt(ids, name=name, perplexity=perplexity)

    def check_queue_room(self, count: int = 1) -> None:
        """``EngineBusyError`` when ``count`` more requests would not fit in the waiting queue."""
        self.engine.check_queue_room(count)

    # -- requests, one step at a time (for servers that drive the engine from their own loop) ------------------

    def add_request(self, prompt_ids: Seq[int], gen_config: GenerationConfig | None = None) -> Sequence:
        """Queue one generation request (validated; nothing is queued on error); read it with ``output_stream``."""
        return self.engine.add_request(prompt_ids, gen_config)

    def add_scoring_request(self, input_ids: Seq[int], top_logprobs: int | None = None) -> Sequence:
        """Queue ``input_ids`` for scoring: once finished, ``seq.nll_sum / seq.nll_count`` is the mean
        cross-entropy and, with ``top_logprobs=k``, ``prompt_logprobs(seq)`` each token's logprob and the top k."""
        return self.engine.add_perplexity_request(input_ids, prompt_logprobs=top_logprobs)

    @staticmethod
    def prompt_logprobs(seq: Sequence) -> list[tuple[float, dict[int, float]]]:
        """(logprob, {token: logprob} of the top k) of tokens 1..n-1 of a finished scoring request."""
        if not seq.is_finished or len(seq.prompt_token_logprobs) != seq.num_tokens - 1:
            raise RequestError("seq", "seq: expected a finished scoring request with top_logprobs set")
        return list(seq.prompt_token_logprobs)

    def step(self) -> list[Sequence]:
        """One engine step; the requests that got a token or finished."""
        return self.engine.step()

    def run_until_done(self, seqs: list[Sequence]) -> Iterator[list[Sequence]]:
        """Step until all of ``seqs`` have finished, yielding the updated requests after each step."""
        return self.engine.run_until_done(seqs)

    def abort(self, seq: Sequence) -> None:
        """End a request (waiting or running) and free its KV cache; a finished one is left as it is."""
        if not seq.is_finished:
            self.engine.abort(seq)

    # -- prompts -------------------------------------------------------------------------------------------------

    def encode(self, prompt: Any, do_preprocess: bool = False) -> list[int]:
        """Token ids of one prompt (see the module docstring for the accepted forms)."""
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise RequestError(
                "prompt", f"prompt: this model has no tokenizer, so expected token ids, got {type(prompt).__name__}"
            )
        if isinstance(prompt, str) and not do_preprocess:
            return tokenizer.encode(prompt)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not (isinstance(messages, (list, tuple)) and all(isinstance(m, dict) for m in messages)):
            raise RequestTypeError(
                "prompt",
                "prompt: expected a string, a list of token ids or a list of {'role', 'content'} messages, "
                f"got {type(prompt).__name__}",
            )
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError(
                "prompt", "prompt: chat messages need a chat template, and this model's tokenizer has none"
            )
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)

    def _batch(self, prompts: Any, gen_config: Any, do_preprocess: bool) -> tuple[bool, list[list[int]], list]:
        single = isinstance(prompts, str) or (
            isinstance(prompts, (list, tuple))
            and (all(isinstance(p, int) for p in prompts) or all(isinstance(p, dict) for p in prompts))
        )
        items = [prompts] if single else list(prompts)
        if not items:
            raise RequestError("prompts", "prompts: expected at least one prompt, got an empty list")
        gens = list(gen_config) if isinstance(gen_config, (list, tuple)) else [gen_config] * len(items)
        if len(gens) != len(items):
            raise RequestError("gen_config", f"gen_config: expected one per prompt ({len(items)}), got {len(gens)}")
        ids = [self.encode(p, do_preprocess) for p in items]
        return single, ids, gens

    # -- generation ----------------------------------------------------------------------------------------------

    def __call__(
        self,
        prompts: Any,
        gen_config: GenerationConfig | Seq[GenerationConfig] | None = None,
        do_preprocess: bool = False,
    ) -> Response | list[Response]:
        """Generate for one prompt (returns a ``Response``) or a batch (returns a list, in order)."""
        single, ids, gens = self._batch(prompts, gen_config, do_preprocess)
        seqs = self.engine.add_requests(ids, gens)
        for _ in self.engine.run_until_done(seqs):
            pass
        responses = [self._response(seq, i) for i, seq in enumerate(seqs)]
        return responses[0] if single else responses

    def stream_infer(
        self,
        prompts: Any,
        gen_config: GenerationConfig | Seq[GenerationConfig] | None = None,
        do_preprocess: bool = False,
    ) -> Iterator[Response]:
        """Yield ``Response`` deltas (new text and token ids, ``index`` = the prompt's position) as tokens arrive;
        each prompt's deltas add up to what ``__call__`` returns for it."""
        _, ids, gens = self._batch(prompts, gen_config, do_preprocess)
        seqs = self.engine.add_requests(ids, gens)
        streams = {seq.seq_id: self.output_stream(seq, i) for i, seq in enumerate(seqs)}
        try:
            for updated in self.engine.run_until_done(seqs):
                for seq in updated:
                    stream = streams.get(seq.seq_id)
                    delta = stream.next() if stream is not None else None
                    if delta is not None:
                        yield delta
        finally:
            for seq in seqs:  # a consumer that stops early must not leave requests behind
                if not seq.is_finished:
                    self.engine.abort(seq)

    def output_stream(self, seq: Sequence, index: int = 0) -> OutputStream:
        """Deltas of generation request ``seq`` (call ``next()`` after each step that updated it)."""
        return OutputStream(seq, self.engine.detokenizer(seq), index)

    def _response(self, seq: Sequence, index: int) -> Response:
        detok = self.engine.detokenizer(seq)
        return Response(
            text=detok.text if detok is not None else "",
            generate_token_len=seq.num_output_tokens,
            input_token_len=seq.num_prompt_tokens,
            finish_reason=seq.finish_reason,
            error=seq.error,
            token_ids=seq.output_ids,
            logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
            index=index,
        )

    # -- perplexity ----------------------------------------------------------------------------------------------

    def get_ppl(self, input_ids: Seq[int] | Seq[Seq[int]]) -> list[float]:
        """Mean cross-entropy (natural log) of each input, as LMDeploy's ``get_ppl``; perplexity is its ``exp``.

        ``input_ids`` is one list of token ids or a list of them; the result is always a list.
        """
        if isinstance(input_ids, (list, tuple)) and input_ids and all(isinstance(t, int) for t in input_ids):
            inputs = [list(input_ids)]
        elif isinstance(input_ids, (list, tuple)) and input_ids:
            inputs = list(input_ids)
        else:
            raise RequestTypeError(
                "input_ids", f"input_ids: expected a list of token ids or a list of such lists, got {input_ids!r:.80}"
            )
        return self.engine.get_ppl(inputs)


def sampling_config(*, temperature: float | None = None, do_sample: bool | None = None,
                    **fields: Any) -> GenerationConfig:  # fmt: skip
    """The one rule every front end uses for "greedy or sample": greedy when ``do_sample`` is ``False`` or
    ``temperature`` is 0; otherwise sample at ``temperature`` (1.0 when not given), with ``top_p``/``top_k`` if
    given. ``fields`` are the other ``GenerationConfig`` fields (``max_new_tokens``, ``stop_words``, ...)."""
    if do_sample is False or temperature == 0:
        return GenerationConfig(do_sample=False, temperature=0.0, **fields)
    return GenerationConfig(do_sample=True, temperature=1.0 if temperature is None else temperature, **fields)


def pipeline(model: str | os.PathLike, engine_config: EngineConfig | None = None, **kwargs: Any) -> Pipeline:
    """A ready ``Pipeline`` for ``model``: a Hugging Face directory, a ``.gguf`` file, or ``"smollm2-135m"``.

    Keyword arguments other than ``engine_config`` (LMDeploy's ``backend_config`` is accepted as an alias) are
    ``EngineConfig`` fields, e.g. ``pipeline(path, session_len=16384)``.
    """
    if "backend_config" in kwargs:
        if engine_config is not None:
            raise TypeError("pipeline: pass engine_config or backend_config, not both")
        engine_config = kwargs.pop("backend_config")
    if kwargs:
        if engine_config is not None:
            raise TypeError(f"pipeline: pass EngineConfig fields inside engine_config, got extra {sorted(kwargs)}")
        engine_config = EngineConfig(**kwargs)
    return Pipeline(model, engine_config)
