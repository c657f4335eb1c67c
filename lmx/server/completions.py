"""``POST /v1/completions`` (text or token-id prompts, one or a batch, streamed or not; ``echo`` + ``logprobs`` as
OpenAI's legacy API and vLLM return them) and LMDeploy's ``POST /get_ppl``."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from lmx.engine import EngineBusyError, GenerationConfig

from .context import ServerContext
from .engine_loop import EngineError
from .errors import APIError, engine_errors
from .protocol import CompletionRequest, PplRequest, parse_body
from .streaming import EventStream, cancel_on_disconnect, sse, stream_error


class Completions:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def get_ppl(self, request: Request) -> dict:
        req = await parse_body(request, PplRequest)
        self.ctx.check_model(req.model)
        if (req.input_ids is None) == (req.prompt is None):
            raise APIError(400, "body: expected exactly one of 'input_ids' or 'prompt'", "input_ids")
        if req.input_ids is not None:
            single = not req.input_ids or isinstance(req.input_ids[0], int)
            inputs = [req.input_ids] if single else req.input_ids
            field = "input_ids"
            self.ctx.check_count(len(inputs), field)
        else:
            texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            self.ctx.check_count(len(texts), "prompt")
            for i, text in enumerate(texts):
                self.ctx.check_chars(len(text), "prompt" if len(texts) == 1 else f"prompt[{i}]")
            inputs = [await self.ctx.encode(t, "prompt") for t in texts]
            field = "prompt"
        for i, ids in enumerate(inputs):
            self.ctx.validate(ids, field if len(inputs) == 1 else f"{field}[{i}]", perplexity=True)
        self.ctx.check_queue(len(inputs))

        async def run() -> list[float]:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.ctx.engine.ppl(ids)) for ids in inputs]
            return [t.result() for t in tasks]

        losses = await engine_errors(cancel_on_disconnect(request, run()))
        return {
            "object": "ppl", "model": self.ctx.model_name, "mean_cross_entropy": losses,
            "perplexity": [math.exp(x) for x in losses], "num_tokens": [len(i) for i in inputs],
        }  # fmt: skip

    # -- completions -----------------------------------------------------------------------------------------------

    async def completions(self, request: Request):
        req: CompletionRequest = await parse_body(request, CompletionRequest)
        self.ctx.check_model(req.model)
        prompts = self.split_prompt(req.prompt)
        self.ctx.check_count(len(prompts), "prompt")
        for i, p in enumerate(prompts):  # every prompt's size before any tokenizing
            if isinstance(p, str):
                self.ctx.check_chars(len(p), "prompt" if len(prompts) == 1 else f"prompt[{i}]")
        ids_list = [p if isinstance(p, list) else await self.ctx.encode(p, "prompt") for p in prompts]
        if req.max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens: expected >= 1 (0 only with echo, to score the prompt), got 0",
                           "max_tokens", "invalid_value")  # fmt: skip
        for i, ids in enumerate(ids_list):
            field = "prompt" if len(ids_list) == 1 else f"prompt[{i}]"
            self.ctx.validate(ids, field, perplexity=req.max_tokens == 0)
        max_new = req.max_tokens if req.max_tokens is not None else self.ctx.session_len
        gen = self.ctx.gen_config(req, max(max_new, 1), req.logprobs)
        texts = [p if isinstance(p, str) else None for p in prompts]
        self.ctx.check_queue(len(ids_list) * (2 if req.echo and req.logprobs is not None else 1))
        if req.stream:
            if len(ids_list) != 1:
                raise APIError(400, f"prompt: streaming takes one prompt, got {len(ids_list)}", "prompt")
            return EventStream(self.completion_stream(req, ids_list[0], texts[0], gen))

        async def run() -> list[dict]:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.complete_one(i, req, ids, text, gen))
                         for i, (ids, text) in enumerate(zip(ids_list, texts))]  # fmt: skip
            return [t.result() for t in tasks]

        choices = await engine_errors(cancel_on_disconnect(request, run()))
        prompt_tokens = sum(len(ids) for ids in ids_list)
        completion_tokens = sum(c.pop("_completion_tokens") for c in choices)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.ctx.model_name, "choices": choices, "usage": self.ctx.usage(prompt_tokens, completion_tokens),
        }  # fmt: skip

    @staticmethod
    def split_prompt(prompt) -> list:
        """One prompt (text or ids) or a batch of them -> a list of prompts."""
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise APIError(400, "prompt: expected a non-empty string, token-id list or list of them, got []",
                           "prompt")  # fmt: skip
        if isinstance(prompt[0], int):
            return [prompt]
        return list(prompt)

    async def complete_one(self, index: int, req: CompletionRequest, ids: list[int], text: str | None,
                           gen: GenerationConfig) -> dict:  # fmt: skip
        want_prompt_logprobs = req.echo and req.logprobs is not None
        scoring = None
        if want_prompt_logprobs and len(ids) > 1:
            scoring = asyncio.ensure_future(self.ctx.engine.score(ids, top_k=req.logprobs))
        out_text, out_ids, out_logprobs, finish = "", [], [], "length"
        try:
            if req.max_tokens != 0:
                async for delta in self.ctx.engine.generate(ids, gen):
                    out_text += delta.text
                    out_ids += delta.token_ids
                    out_logprobs += delta.logprobs or []
                    finish = delta.finish_reason or finish
            prompt_scores = await scoring if scoring is not None else []
        finally:
            if scoring is not None and not scoring.done():
                scoring.cancel()
        logprobs = None
        if req.logprobs is not None:
            logprobs = self.completion_logprobs(ids if req.echo else [], prompt_scores, out_ids, out_logprobs)
        prompt_text = (text if text is not None else self.ctx.decode(ids)) if req.echo else ""
        return {"index": index, "text": prompt_text + out_text, "logprobs": logprobs, "finish_reason": finish,
                "_completion_tokens": len(out_ids)}  # fmt: skip

    def completion_logprobs(self, prompt_ids, prompt_scores, out_ids, out_logprobs) -> dict:
        """OpenAI's legacy ``logprobs`` object; echoed prompt tokens first, the first one with ``None``."""
        ids = list(prompt_ids) + list(out_ids)
        strings = self.ctx.token_strings(ids)
        pairs: list = [None] * min(1, len(prompt_ids)) + list(prompt_scores) + list(out_logprobs)
        token_logprobs, top_logprobs, text_offset, offset = [], [], [], 0
        cache: dict[int, str] = dict(zip(ids, strings))
        for string, pair in zip(strings, pairs):
            text_offset.append(offset)
            offset += len(string)
            if pair is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            value, top = pair
            token_logprobs.append(value)
            tops = {self._token_string(t, cache): v for t, v in top.items()}
            tops.setdefault(string, value)  # vLLM: the chosen token is always among the top logprobs
            top_logprobs.append(tops)
        return {"tokens": strings, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": text_offset}  # fmt: skip

    def _token_string(self, token: int, cache: dict[int, str]) -> str:
        if token not in cache:
            cache[token] = self.ctx.token_strings([token])[0]
        return cache[token]

    async def completion_stream(self, req: CompletionRequest, ids, text, gen) -> AsyncIterator[str]:
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        model = self.ctx.model_name

        def chunk(piece: str, logprobs, finish) -> str:
            return sse({"id": cid, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"index": 0, "text": piece, "logprobs": logprobs, "finish_reason": finish}]})  # fmt: skip

        completion_tokens = 0
        try:
            if req.echo:
                logprobs = None
                if req.logprobs is not None:
                    scores = await self.ctx.engine.score(ids, top_k=req.logprobs) if len(ids) > 1 else []
                    logprobs = self.completion_logprobs(ids, scores, [], [])
                yield chunk(text if text is not None else self.ctx.decode(ids), logprobs, None)
            async for delta in self.ctx.engine.generate(ids, gen):
                completion_tokens = delta.generate_token_len
                if not delta.text and delta.finish_reason is None and req.logprobs is None:
                    continue
                logprobs = None
                if req.logprobs is not None:
                    logprobs = self.completion_logprobs([], [], delta.token_ids, delta.logprobs or [])
                yield chunk(delta.text, logprobs, delta.finish_reason)
        except (EngineError, EngineBusyError, ValueError, TypeError) as e:
            yield stream_error(e)
        if req.stream_options and req.stream_options.include_usage:
            yield sse({"id": cid, "object": "text_completion", "created": created, "model": self.ctx.model_name,
                       "choices": [], "usage": self.ctx.usage(len(ids), completion_tokens)})  # fmt: skip
        yield sse("[DONE]")
