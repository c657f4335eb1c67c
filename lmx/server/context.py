"""What every endpoint shares: ``ServerContext`` holds the app's engine, model name and limits, and the checks a
request passes before it reaches the engine (model name, sizes, queue room, token ids) with their API errors."""

from __future__ import annotations

import asyncio
import time

from lmx.engine import EngineBusyError, GenerationConfig, sampling_config

from .engine_loop import AsyncEngine
from .errors import APIError, busy_error, user_error
from .guards import ServerLimits


class ServerContext:
    """One per app; the endpoint classes (``completions.Completions``, ``chat.Chat``, ...) hold it."""

    def __init__(self, engine: AsyncEngine, model_name: str, limits: ServerLimits) -> None:
        self.engine = engine
        self.model_name = model_name
        self.limits = limits
        self.tokenizer = engine.tokenizer
        self.created = int(time.time())

    @property
    def session_len(self) -> int:
        return self.engine.pipe.max_sequence_len

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"model: expected {self.model_name!r} (see GET /v1/models), got {name!r}",
                           "model", "model_not_found")  # fmt: skip

    def need_tokenizer(self, field: str) -> None:
        if self.tokenizer is None:
            raise APIError(400, f"{field}: this model has no tokenizer, so text needs token ids", field)

    @property
    def max_prompt_chars(self) -> int:
        return self.limits.prompt_chars(self.session_len)

    def check_chars(self, num_chars: int, field: str) -> None:
        """Refuse text that cannot fit before paying for its tokenization."""
        if num_chars > self.max_prompt_chars:
            raise APIError(413, f"{field}: expected at most {self.max_prompt_chars} characters (--max-prompt-chars), "
                           f"got {num_chars}", field, "prompt_too_large")  # fmt: skip

    def check_count(self, count: int, field: str) -> None:
        limit = self.limits.max_prompts_per_request
        if count > limit:
            raise APIError(413, f"{field}: expected at most {limit} prompts per request (--max-prompts-per-request), "
                           f"got {count}", field, "too_many_prompts")  # fmt: skip

    def check_queue(self, count: int = 1) -> None:
        try:
            self.engine.pipe.check_queue_room(count)
        except EngineBusyError as e:
            raise busy_error(e) from None

    async def encode(self, text: str, field: str, add_special_tokens: bool = True) -> list[int]:
        self.need_tokenizer(field)
        self.check_chars(len(text), field)
        return await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens=add_special_tokens)

    def validate(self, ids: list[int], field: str, *, perplexity: bool = False) -> None:
        try:
            self.engine.pipe.validate(ids, name=field, perplexity=perplexity)
        except (ValueError, TypeError) as e:
            raise user_error(e, field) from None

    def gen_config(self, req, max_new_tokens: int, logprobs: int | None) -> GenerationConfig:
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        try:
            return sampling_config(
                max_new_tokens=max_new_tokens, temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0),
                repetition_penalty=req.repetition_penalty,
                stop_words=stop or None, stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos,
                random_seed=req.seed, logprobs=logprobs,
            )  # fmt: skip
        except (ValueError, TypeError) as e:
            raise user_error(e, "prompt") from None

    def token_strings(self, ids: list[int]) -> list[str]:
        if self.tokenizer is None:
            return [str(t) for t in ids]
        return self.tokenizer.batch_decode([[t] for t in ids])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip

    def chat_ids(self, messages, add_generation_prompt: bool = True) -> list[int]:
        self.need_tokenizer("messages")
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "messages: this model's tokenizer has no chat template; use /v1/completions",
                           "messages")  # fmt: skip
        chat = [{"role": m.role, "content": m.text()} for m in messages]
        self.check_chars(sum(len(m["content"]) for m in chat), "messages")
        try:
            text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as e:  # a template may reject a role order, e.g. two user turns in a row
            raise APIError(400, f"messages: the chat template rejected them ({e})", "messages") from None
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""
