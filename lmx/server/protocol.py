"""Request bodies of the OpenAI-compatible API (OpenAI's field names, plus vLLM's and LMDeploy's extras).

Every model forbids unknown fields and is validated strictly (no "5" for 5), so a typo or a wrong type gets a
400 that names the field instead of being silently ignored (``parse_body``). Responses are plain dicts built by the
endpoint modules.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmx.engine import (
    LOGPROBS_MAX,
    MAX_NEW_TOKENS_MAX,
    REPETITION_PENALTY_RANGE,
    SEED_RANGE,
    TOP_K_MAX,
)  # fmt: skip

from .errors import APIError

JSON_PARSE_INLINE_BYTES = 64 * 1024  # larger bodies are parsed on a worker thread, so /health stays quick


class _Strict(BaseModel):
    # NaN and infinities (JSON's NaN/Infinity, or 1e999) are refused: no sampling range can hold them.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=TOP_K_MAX)  # vLLM's extra; 0 or -1: no top-k cut
    # vLLM's / LMDeploy's extra; 1 = off
    repetition_penalty: float = Field(1.0, ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1])
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])  # unsigned 64 bits
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per prompt
    ignore_eos: bool = False
    user: str | None = None
    # Accepted for compatibility; only their neutral values are supported.
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Sampling):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=0, le=MAX_NEW_TOKENS_MAX)  # 0 only with echo: score the prompt
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=LOGPROBS_MAX)
    suffix: None = None
    best_of: int | None = Field(None, ge=1, le=1)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=LOGPROBS_MAX)


class PplRequest(_Strict):
    """LMDeploy's ``get_ppl``: one input or a batch, as token ids or text."""

    input_ids: list[int] | list[list[int]] | None = None
    prompt: str | list[str] | None = None
    model: str | None = None


class TokenizeRequest(_Strict):
    """vLLM's ``/tokenize`` (lm-eval's ``tokenizer_backend=remote`` uses it)."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    model: str | None = None


class DetokenizeRequest(_Strict):
    tokens: list[int]
    model: str | None = None


# -- parsing ---------------------------------------------------------------------------------------------------------


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        got = repr(content_type) if content_type else "none"
        raise APIError(415, f"Content-Type: expected 'application/json', got {got}", None, "unsupported_media_type")
    raw = await request.body()
    try:
        if len(raw) > JSON_PARSE_INLINE_BYTES:
            return await asyncio.to_thread(model.model_validate_json, raw)
        return model.model_validate_json(raw or b"")
    except ValidationError as e:
        errors = e.errors(include_url=False)
        err = errors[0]
        loc = _param(err["loc"])
        forms = [str(x) for x in err["loc"] if _is_type_tag(x)]
        if err["type"] == "json_invalid":
            raise APIError(400, f"body: expected a JSON object, got invalid JSON ({err['msg']})") from None
        if err["type"] == "model_type" or err["type"] == "model_attributes_type":
            raise APIError(400, f"body: expected a JSON object, got {raw[:40]!r}") from None
        if err["type"] == "extra_forbidden":
            raise APIError(400, f"{loc}: unknown field for {request.url.path}", loc, "unknown_field") from None
        if err["type"] == "missing":
            raise APIError(400, f"{loc}: required field is missing", loc, "missing_field") from None
        got = err.get("input")
        if forms:  # a union: name every accepted form rather than the first one pydantic tried
            tags = sorted({_tag(x) for er in errors if _param(er["loc"]) == loc for x in er["loc"] if _is_type_tag(x)})
            expected = f"one of: {', '.join(tags)}"
        else:
            expected = err["msg"][0].lower() + err["msg"][1:]
        raise APIError(
            400, f"{loc}: {expected}; got {_json_type(got)} {json.dumps(got)[:80]}", loc, "invalid_value"
        ) from None


def _is_type_tag(item) -> bool:
    """pydantic puts the union member it tried into ``loc`` ('str', 'list[int]', 'function-after[...]')."""
    return isinstance(item, str) and (item in ("str", "int", "float", "bool", "none") or "[" in item)


def _tag(item: str) -> str:
    return {"str": "a string", "list[int]": "a list of token ids", "list[str]": "a list of strings",
            "list[list[int]]": "a list of token-id lists", "list[TextPart]": "a list of text parts",
            "list[constrained-int]": "a list of token ids"}.get(item, item)  # fmt: skip


def _param(loc) -> str | None:
    return ".".join(str(x) for x in loc if not _is_type_tag(x)) or None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip
