"""Request bodies of the OpenAI-compatible API (OpenAI's field names, plus vLLM's and LMDeploy's extras).

Every model forbids unknown fields and is validated strictly (no "5" for 5), so a typo or a wrong type gets a
400 that names the field instead of being silently ignored. Responses are plain dicts built in ``app.py``.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from lmx.engine import (
    LOGPROBS_MAX, MAX_NEW_TOKENS_MAX, REPETITION_PENALTY_RANGE, SEED_RANGE, TOP_K_MAX,
)  # fmt: skip


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
    stop: Union[str, list[str], None] = None
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


Prompt = Union[str, list[str], list[int], list[list[int]]]


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
    content: Union[str, list[TextPart]]
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

    input_ids: Union[list[int], list[list[int]], None] = None
    prompt: Union[str, list[str], None] = None
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
