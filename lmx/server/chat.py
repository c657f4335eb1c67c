"""``POST /v1/chat/completions``: messages through the model's chat template, streamed or not, with logprobs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from lmx.engine import EngineBusyError

from .context import ServerContext
from .engine_loop import EngineError
from .errors import engine_errors
from .protocol import ChatCompletionRequest, parse_body
from .streaming import EventStream, cancel_on_disconnect, sse, stream_error


class Chat:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def chat_completions(self, request: Request):
        req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        self.ctx.check_model(req.model)
        ids = await asyncio.to_thread(self.ctx.chat_ids, req.messages)
        self.ctx.validate(ids, "messages")
        self.ctx.check_queue()
        max_new = req.max_completion_tokens or req.max_tokens or max(self.ctx.session_len - len(ids), 1)
        top = (req.top_logprobs or 0) if req.logprobs else None
        gen = self.ctx.gen_config(req, max_new, top)
        if req.stream:
            return EventStream(self.chat_stream(req, ids, gen))

        async def run() -> tuple[str, list, str, int]:
            text, logprobs, finish, tokens, token_ids = "", [], "length", 0, []
            async for delta in self.ctx.engine.generate(ids, gen):
                text += delta.text
                token_ids += delta.token_ids
                logprobs += delta.logprobs or []
                finish, tokens = delta.finish_reason or finish, delta.generate_token_len
            return text, self.chat_logprobs(token_ids, logprobs) if req.logprobs else None, finish, tokens

        text, logprobs, finish, tokens = await engine_errors(cancel_on_disconnect(request, run()))
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                  "finish_reason": finish}  # fmt: skip
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.ctx.model_name, "choices": [choice], "usage": self.ctx.usage(len(ids), tokens),
        }  # fmt: skip

    def chat_logprobs(self, token_ids: list[int], logprobs: list) -> dict:
        strings = self.ctx.token_strings(token_ids)
        content = []
        for string, (value, top) in zip(strings, logprobs):
            tops = [{"token": s, "logprob": v, "bytes": list(s.encode())}
                    for s, v in zip(self.ctx.token_strings(list(top)), top.values())]  # fmt: skip
            content.append({"token": string, "logprob": value, "bytes": list(string.encode()), "top_logprobs": tops})
        return {"content": content}

    async def chat_stream(self, req: ChatCompletionRequest, ids: list[int], gen) -> AsyncIterator[str]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        model = self.ctx.model_name

        def chunk(delta: dict, finish=None, logprobs=None) -> str:
            return sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})  # fmt: skip

        tokens = 0
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for delta in self.ctx.engine.generate(ids, gen):
                tokens = delta.generate_token_len
                if not delta.text and delta.finish_reason is None:
                    continue
                logprobs = self.chat_logprobs(delta.token_ids, delta.logprobs) if req.logprobs else None
                yield chunk({"content": delta.text} if delta.text else {}, delta.finish_reason, logprobs)
        except (EngineError, EngineBusyError, ValueError, TypeError) as e:
            yield stream_error(e)
        if req.stream_options and req.stream_options.include_usage:
            yield sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.ctx.model_name,
                       "choices": [], "usage": self.ctx.usage(len(ids), tokens)})  # fmt: skip
        yield sse("[DONE]")
