"""The OpenAI-compatible HTTP server (DESIGN §6): ``create_app(pipe)`` returns a FastAPI app.

Endpoints: ``GET /v1/models``, ``GET /health``, ``POST /v1/completions`` (text or token-id prompts, ``echo`` +
``logprobs`` as OpenAI's legacy API and vLLM return them), ``POST /v1/chat/completions``, ``POST /get_ppl``
(LMDeploy), vLLM's ``/tokenize``, ``/detokenize`` and ``/tokenizer_info`` (lm-eval's remote tokenizer), the
document-chat page at ``/`` and its upload endpoint ``POST /v1/documents``.

Every error is a 4xx/5xx with OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmx.engine import EngineBusyError, GenerationConfig, as_request_error

from . import documents
from .engine_loop import AsyncEngine, EngineDeadError, EngineError
from .guards import (
    APIKeyMiddleware, BodyLimitMiddleware, BodyTooLarge, HostCheckMiddleware, ServerLimits,
)  # fmt: skip
from .protocol import (
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, PplRequest, TokenizeRequest,
)  # fmt: skip

STATIC_DIR = Path(__file__).with_name("static")
JSON_PARSE_INLINE_BYTES = 64 * 1024  # larger bodies are parsed on a worker thread, so /health stays quick
RETRY_AFTER_SECONDS = 1
# Engine argument names -> the request field a user wrote.
ENGINE_TO_API_FIELD = {
    "max_new_tokens": "max_tokens", "stop_words": "stop", "random_seed": "seed", "logprobs": "logprobs",
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repetition_penalty",
    "stop_token_ids": "stop_token_ids", "input_ids": "input_ids",
}  # fmt: skip


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers


def error_response(status: int, message: str, param=None, code=None, type="invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def busy_error(e: Exception) -> APIError:
    return APIError(503, f"{e} (--max-queued-requests)", None, "server_busy", "server_error",
                    {"Retry-After": str(RETRY_AFTER_SECONDS)})  # fmt: skip


def user_error(e: Exception, prompt_field: str) -> APIError:
    """A request error of the engine (``RequestError``: its ``param`` and ``code``) as a 400 naming the request's
    field; the engine's prompt arguments are ``prompt_field`` here."""
    err = as_request_error(e)
    param = err.param
    if param is not None and param.startswith(("prompt", "input_ids")):
        param = prompt_field
    elif param is not None:
        param = ENGINE_TO_API_FIELD.get(param, param)
    return APIError(400, str(err), param, err.code)


# -- request parsing -------------------------------------------------------------------------------------------------


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


# -- the app ---------------------------------------------------------------------------------------------------------


def create_app(pipe, *, model_name: str, api_key: str | None = None, limits: ServerLimits | None = None,
               bind_host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] = (),
               allowed_origins: tuple[str, ...] = ()) -> FastAPI:  # fmt: skip
    """The app serving ``pipe`` (an ``lmx.Pipeline``) as ``model_name``; the engine thread runs while it lives.

    ``bind_host`` and ``allowed_hosts`` are the names its ``Host`` header may carry; ``allowed_origins`` are the
    web origins (besides its own page) allowed to call it, with CORS headers for them; ``limits`` bound each
    request (see ``ServerLimits``)."""
    if not (STATIC_DIR / "index.html").is_file():
        raise FileNotFoundError(f"chat page: expected lmx's static files in {STATIC_DIR}, which has no index.html "
                                "(an incomplete install: reinstall lmx)")  # fmt: skip
    limits = limits or ServerLimits()
    engine = AsyncEngine(pipe)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.shutdown()

    app = FastAPI(title="lmx", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    app.state.model_name = model_name
    app.state.limits = limits
    server = _Server(engine, model_name, limits)
    # Added innermost first: the host check runs before anything else, the key check last.
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    if allowed_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    app.add_middleware(HostCheckMiddleware, bind_host=bind_host, allowed_hosts=allowed_hosts,
                       allowed_origins=allowed_origins)  # fmt: skip

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code, e.type, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = f"{request.method} {request.url.path}: {e.detail}"
        return error_response(e.status_code, message, None, code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        return error_response(400, f"{loc}: {err['msg']}", loc, "invalid_value")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:  # a TaskGroup's one failure
            e = e.exceptions[0]
        return error_response(500, f"internal error: {type(e).__name__}: {e}", None, None, "internal_error")

    app.get("/health")(server.health)
    app.get("/v1/models")(server.models)
    app.post("/v1/completions")(server.completions)
    app.post("/v1/chat/completions")(server.chat_completions)
    app.post("/get_ppl")(server.get_ppl)
    app.post("/tokenize")(server.tokenize)
    app.post("/detokenize")(server.detokenize)
    app.get("/tokenizer_info")(server.tokenizer_info)
    app.post("/v1/documents")(server.upload_document)
    app.get("/", include_in_schema=False)(lambda: FileResponse(STATIC_DIR / "index.html"))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class EventStream(StreamingResponse):
    """SSE that stops (and closes its generator, which aborts the request) as soon as the client disconnects.

    Starlette only notices a disconnect on its next write under ASGI 2.4; a long prefill writes nothing, so this
    also listens for ``http.disconnect``, and always closes the body iterator.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def run(func) -> None:
                    with contextlib.suppress(OSError):
                        await func()
                    group.cancel_scope.cancel()

                group.start_soon(run, lambda: self.stream_response(send))
                await run(lambda: self.listen_for_disconnect(receive))
        finally:
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()


def sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def cancel_on_disconnect(request: Request, awaitable) -> Any:
    """Await ``awaitable``, cancelling it (and so aborting its engine requests) when the client goes away."""
    task = asyncio.ensure_future(awaitable)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    finally:
        watcher.cancel()


class _Server:
    """The endpoint handlers; one instance per app."""

    def __init__(self, engine: AsyncEngine, model_name: str, limits: ServerLimits) -> None:
        self.engine = engine
        self.model_name = model_name
        self.limits = limits
        self.tokenizer = engine.tokenizer
        self.created = int(time.time())

    # -- helpers ---------------------------------------------------------------------------------------------------

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
            return GenerationConfig(
                max_new_tokens=max_new_tokens, do_sample=req.temperature > 0, temperature=req.temperature,
                top_p=req.top_p, top_k=max(req.top_k, 0), repetition_penalty=req.repetition_penalty,
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

    # -- simple endpoints ------------------------------------------------------------------------------------------

    async def health(self):
        dead = self.engine.dead_reason
        if dead is not None:
            error = {"message": f"engine: the engine thread has stopped ({dead}); restart the server",
                     "type": "server_error", "param": None, "code": "engine_dead"}  # fmt: skip
            return JSONResponse({"status": "error", "model": self.model_name, "error": error}, status_code=503)
        return {"status": "ok", "model": self.model_name, "requests_in_engine": self.engine.num_unfinished}

    async def models(self) -> dict:
        card = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "lmx",
                "max_model_len": self.session_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    async def tokenize(self, request: Request) -> dict:
        req = await parse_body(request, TokenizeRequest)
        self.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "body: expected exactly one of 'prompt' or 'messages'", "prompt")
        if req.messages is not None:
            ids = await asyncio.to_thread(self.chat_ids, req.messages, req.add_generation_prompt)
        else:
            ids = await self.encode(req.prompt, "prompt", req.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.session_len}

    async def detokenize(self, request: Request) -> dict:
        req = await parse_body(request, DetokenizeRequest)
        self.check_model(req.model)
        self.need_tokenizer("tokens")
        vocab = len(self.tokenizer)
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"tokens: expected token ids in [0, {vocab}), got {bad[:5]}", "tokens", "invalid_value")
        return {"prompt": await asyncio.to_thread(self.tokenizer.decode, req.tokens)}

    async def tokenizer_info(self) -> dict:
        self.need_tokenizer("tokenizer")
        tok = self.tokenizer
        return {
            "tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
            "pad_token": tok.pad_token, "chat_template": getattr(tok, "chat_template", None),
            "model_max_length": self.session_len,
        }  # fmt: skip

    async def get_ppl(self, request: Request) -> dict:
        req = await parse_body(request, PplRequest)
        self.check_model(req.model)
        if (req.input_ids is None) == (req.prompt is None):
            raise APIError(400, "body: expected exactly one of 'input_ids' or 'prompt'", "input_ids")
        if req.input_ids is not None:
            single = not req.input_ids or isinstance(req.input_ids[0], int)
            inputs = [req.input_ids] if single else req.input_ids
            field = "input_ids"
            self.check_count(len(inputs), field)
        else:
            texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            self.check_count(len(texts), "prompt")
            for i, text in enumerate(texts):
                self.check_chars(len(text), "prompt" if len(texts) == 1 else f"prompt[{i}]")
            inputs = [await self.encode(t, "prompt") for t in texts]
            field = "prompt"
        for i, ids in enumerate(inputs):
            self.validate(ids, field if len(inputs) == 1 else f"{field}[{i}]", perplexity=True)
        self.check_queue(len(inputs))

        async def run() -> list[float]:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.engine.ppl(ids)) for ids in inputs]
            return [t.result() for t in tasks]

        losses = await self.guard(cancel_on_disconnect(request, run()))
        return {
            "object": "ppl", "model": self.model_name, "mean_cross_entropy": losses,
            "perplexity": [math.exp(x) for x in losses], "num_tokens": [len(i) for i in inputs],
        }  # fmt: skip

    # -- completions -----------------------------------------------------------------------------------------------

    async def completions(self, request: Request):
        req: CompletionRequest = await parse_body(request, CompletionRequest)
        self.check_model(req.model)
        prompts = self.split_prompt(req.prompt)
        self.check_count(len(prompts), "prompt")
        for i, p in enumerate(prompts):  # every prompt's size before any tokenizing
            if isinstance(p, str):
                self.check_chars(len(p), "prompt" if len(prompts) == 1 else f"prompt[{i}]")
        ids_list = [p if isinstance(p, list) else await self.encode(p, "prompt") for p in prompts]
        if req.max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens: expected >= 1 (0 only with echo, to score the prompt), got 0",
                           "max_tokens", "invalid_value")  # fmt: skip
        for i, ids in enumerate(ids_list):
            field = "prompt" if len(ids_list) == 1 else f"prompt[{i}]"
            self.validate(ids, field, perplexity=req.max_tokens == 0)
        max_new = req.max_tokens if req.max_tokens is not None else self.session_len
        gen = self.gen_config(req, max(max_new, 1), req.logprobs)
        texts = [p if isinstance(p, str) else None for p in prompts]
        self.check_queue(len(ids_list) * (2 if req.echo and req.logprobs is not None else 1))
        if req.stream:
            if len(ids_list) != 1:
                raise APIError(400, f"prompt: streaming takes one prompt, got {len(ids_list)}", "prompt")
            return EventStream(self.completion_stream(req, ids_list[0], texts[0], gen))

        async def run() -> list[dict]:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.complete_one(i, req, ids, text, gen))
                         for i, (ids, text) in enumerate(zip(ids_list, texts))]  # fmt: skip
            return [t.result() for t in tasks]

        choices = await self.guard(cancel_on_disconnect(request, run()))
        prompt_tokens = sum(len(ids) for ids in ids_list)
        completion_tokens = sum(c.pop("_completion_tokens") for c in choices)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.model_name, "choices": choices, "usage": self.usage(prompt_tokens, completion_tokens),
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

    async def guard(self, awaitable):
        try:
            return await awaitable
        except* EngineBusyError as group:
            raise busy_error(group.exceptions[0]) from None
        except* EngineDeadError as group:
            raise APIError(503, str(group.exceptions[0]), None, "engine_dead", "server_error") from None
        except* EngineError as group:
            raise APIError(500, str(group.exceptions[0]), None, "engine_error", "internal_error") from None
        except* (ValueError, TypeError) as group:
            raise user_error(group.exceptions[0], "prompt") from None

    async def complete_one(self, index: int, req: CompletionRequest, ids: list[int], text: str | None,
                           gen: GenerationConfig) -> dict:  # fmt: skip
        want_prompt_logprobs = req.echo and req.logprobs is not None
        scoring = None
        if want_prompt_logprobs and len(ids) > 1:
            scoring = asyncio.ensure_future(self.engine.score(ids, top_k=req.logprobs))
        out_text, out_ids, out_logprobs, finish = "", [], [], "length"
        try:
            if req.max_tokens != 0:
                async for delta in self.engine.generate(ids, gen):
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
        prompt_text = (text if text is not None else self.decode(ids)) if req.echo else ""
        return {"index": index, "text": prompt_text + out_text, "logprobs": logprobs, "finish_reason": finish,
                "_completion_tokens": len(out_ids)}  # fmt: skip

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""

    def completion_logprobs(self, prompt_ids, prompt_scores, out_ids, out_logprobs) -> dict:
        """OpenAI's legacy ``logprobs`` object; echoed prompt tokens first, the first one with ``None``."""
        ids = list(prompt_ids) + list(out_ids)
        strings = self.token_strings(ids)
        pairs: list = [None] * min(1, len(prompt_ids)) + list(prompt_scores) + list(out_logprobs)
        token_logprobs, top_logprobs, text_offset, offset = [], [], [], 0
        cache: dict[int, str] = dict(zip(ids, strings))
        for token, string, pair in zip(ids, strings, pairs):
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
            cache[token] = self.token_strings([token])[0]
        return cache[token]

    async def completion_stream(self, req: CompletionRequest, ids, text, gen) -> AsyncIterator[str]:
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(piece: str, logprobs, finish) -> str:
            return sse({"id": cid, "object": "text_completion", "created": created, "model": self.model_name,
                        "choices": [{"index": 0, "text": piece, "logprobs": logprobs, "finish_reason": finish}]})  # fmt: skip

        completion_tokens = 0
        try:
            if req.echo:
                logprobs = None
                if req.logprobs is not None:
                    scores = await self.engine.score(ids, top_k=req.logprobs) if len(ids) > 1 else []
                    logprobs = self.completion_logprobs(ids, scores, [], [])
                yield chunk(text if text is not None else self.decode(ids), logprobs, None)
            async for delta in self.engine.generate(ids, gen):
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
            yield sse({"id": cid, "object": "text_completion", "created": created, "model": self.model_name,
                       "choices": [], "usage": self.usage(len(ids), completion_tokens)})  # fmt: skip
        yield sse("[DONE]")

    # -- chat completions ------------------------------------------------------------------------------------------

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

    async def chat_completions(self, request: Request):
        req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        self.check_model(req.model)
        ids = await asyncio.to_thread(self.chat_ids, req.messages)
        self.validate(ids, "messages")
        self.check_queue()
        max_new = req.max_completion_tokens or req.max_tokens or max(self.session_len - len(ids), 1)
        top = (req.top_logprobs or 0) if req.logprobs else None
        gen = self.gen_config(req, max_new, top)
        if req.stream:
            return EventStream(self.chat_stream(req, ids, gen))

        async def run() -> tuple[str, list, str, int]:
            text, logprobs, finish, tokens, token_ids = "", [], "length", 0, []
            async for delta in self.engine.generate(ids, gen):
                text += delta.text
                token_ids += delta.token_ids
                logprobs += delta.logprobs or []
                finish, tokens = delta.finish_reason or finish, delta.generate_token_len
            return text, self.chat_logprobs(token_ids, logprobs) if req.logprobs else None, finish, tokens

        text, logprobs, finish, tokens = await self.guard(cancel_on_disconnect(request, run()))
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                  "finish_reason": finish}  # fmt: skip
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name, "choices": [choice], "usage": self.usage(len(ids), tokens),
        }  # fmt: skip

    def chat_logprobs(self, token_ids: list[int], logprobs: list) -> dict:
        strings = self.token_strings(token_ids)
        content = []
        for string, (value, top) in zip(strings, logprobs):
            tops = [{"token": s, "logprob": v, "bytes": list(s.encode())}
                    for s, v in zip(self.token_strings(list(top)), top.values())]  # fmt: skip
            content.append({"token": string, "logprob": value, "bytes": list(string.encode()), "top_logprobs": tops})
        return {"content": content}

    async def chat_stream(self, req: ChatCompletionRequest, ids: list[int], gen) -> AsyncIterator[str]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish=None, logprobs=None) -> str:
            return sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})  # fmt: skip

        tokens = 0
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for delta in self.engine.generate(ids, gen):
                tokens = delta.generate_token_len
                if not delta.text and delta.finish_reason is None:
                    continue
                logprobs = self.chat_logprobs(delta.token_ids, delta.logprobs) if req.logprobs else None
                yield chunk({"content": delta.text} if delta.text else {}, delta.finish_reason, logprobs)
        except (EngineError, EngineBusyError, ValueError, TypeError) as e:
            yield stream_error(e)
        if req.stream_options and req.stream_options.include_usage:
            yield sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                       "choices": [], "usage": self.usage(len(ids), tokens)})  # fmt: skip
        yield sse("[DONE]")

    # -- documents (the chat page) ---------------------------------------------------------------------------------

    async def upload_document(self, request: Request) -> dict:
        """Multipart ``file`` (TXT / Markdown / PDF), ``reserve`` (tokens kept free for the question and the
        answer) and ``truncate`` ("true": middle-truncate an over-long document; otherwise refuse it)."""
        try:
            form = await request.form()
        except BodyTooLarge:
            raise
        except Exception as e:
            raise APIError(400, f"body: expected multipart/form-data with a 'file' field ({e})", "file") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise APIError(400, "file: expected an uploaded file (multipart field 'file'), got none", "file")
        reserve = _form_int(form, "reserve", 512)
        truncate = str(form.get("truncate", "false")).lower() in ("1", "true", "on", "yes")
        data = await upload.read()
        text = await self.extract(upload.filename or "", data)
        self.need_tokenizer("file")
        if len(text) > self.max_prompt_chars:
            raise APIError(413, f"file: {upload.filename!r} holds {len(text)} characters of text, more than "
                           f"{self.max_prompt_chars} (--max-prompt-chars)", "file", "document_too_large")  # fmt: skip
        ids = await self.encode(text, "file", add_special_tokens=False)
        budget = self.session_len - reserve
        if budget < 1:
            raise APIError(400, f"reserve: expected fewer than session_len={self.session_len} tokens, got {reserve}",
                           "reserve")  # fmt: skip
        kept = ids
        if len(ids) > budget:
            if not truncate:
                raise APIError(
                    400, f"file: {upload.filename!r} has {len(ids)} tokens; session_len {self.session_len} minus "
                    f"{reserve} reserved for the question and the answer leaves {budget}. Shorten it or choose "
                    "middle truncation.", "file", "document_too_long",
                )  # fmt: skip
            kept = documents.middle_truncate(ids, budget)
            text = await asyncio.to_thread(self.tokenizer.decode, kept, skip_special_tokens=True)
        return {"filename": upload.filename, "text": text, "num_tokens": len(ids), "kept_tokens": len(kept),
                "truncated": len(kept) < len(ids), "session_len": self.session_len, "budget": budget}  # fmt: skip

    async def extract(self, filename: str, data: bytes) -> str:
        """The upload's text, extracted on a worker thread within ``--pdf-timeout`` and ``--max-pdf-pages``."""
        cancel = threading.Event()
        timeout = self.limits.pdf_timeout
        work = asyncio.to_thread(documents.extract_text, filename, data, max_pages=self.limits.max_pdf_pages,
                                 timeout=timeout, cancel=cancel)  # fmt: skip
        try:
            return await asyncio.wait_for(work, timeout + 1.0)  # the thread checks its own deadline per page
        except documents.DocumentTooLarge as e:
            raise APIError(413, str(e), "file", "document_too_large") from None
        except ValueError as e:
            raise APIError(400, str(e), "file", "unsupported_file") from None
        except TimeoutError:
            raise APIError(413, f"file: extracting the text of {filename!r} took longer than {timeout:g} s "
                           "(--pdf-timeout)", "file", "document_too_large") from None  # fmt: skip
        finally:
            cancel.set()


def stream_error(e: Exception) -> str:
    """An error inside an SSE stream (its 200 is already sent): the same body a non-streamed request would get."""
    if isinstance(e, EngineBusyError):
        err = busy_error(e)
    elif isinstance(e, (ValueError, TypeError)):
        err = user_error(e, "prompt")
    elif isinstance(e, EngineDeadError):
        err = APIError(503, str(e), None, "engine_dead", "server_error")
    else:
        err = APIError(500, str(e), None, "engine_error", "internal_error")
    return sse({"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}})


def _form_int(form, name: str, default: int) -> int:
    value = form.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise APIError(400, f"{name}: expected an integer, got {str(value)[:40]!r}", name) from None
    if number < 0:
        raise APIError(400, f"{name}: expected an integer >= 0, got {number}", name)
    return number
