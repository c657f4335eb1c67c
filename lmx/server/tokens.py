"""vLLM's ``POST /tokenize``, ``POST /detokenize`` and ``GET /tokenizer_info`` (lm-eval's remote tokenizer)."""

from __future__ import annotations

import asyncio

from fastapi import Request

from .context import ServerContext
from .errors import APIError
from .protocol import DetokenizeRequest, TokenizeRequest, parse_body


class Tokens:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def tokenize(self, request: Request) -> dict:
        req = await parse_body(request, TokenizeRequest)
        self.ctx.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "body: expected exactly one of 'prompt' or 'messages'", "prompt")
        if req.messages is not None:
            ids = await asyncio.to_thread(self.ctx.chat_ids, req.messages, req.add_generation_prompt)
        else:
            ids = await self.ctx.encode(req.prompt, "prompt", req.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.ctx.session_len}

    async def detokenize(self, request: Request) -> dict:
        req = await parse_body(request, DetokenizeRequest)
        self.ctx.check_model(req.model)
        self.ctx.need_tokenizer("tokens")
        vocab = len(self.ctx.tokenizer)
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"tokens: expected token ids in [0, {vocab}), got {bad[:5]}", "tokens", "invalid_value")
        return {"prompt": await asyncio.to_thread(self.ctx.tokenizer.decode, req.tokens)}

    async def tokenizer_info(self) -> dict:
        self.ctx.need_tokenizer("tokenizer")
        tok = self.ctx.tokenizer
        return {
            "tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
            "pad_token": tok.pad_token, "chat_template": getattr(tok, "chat_template", None),
            "model_max_length": self.ctx.session_len,
        }  # fmt: skip
