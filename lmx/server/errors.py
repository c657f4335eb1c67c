"""Errors of the OpenAI-compatible API: ``APIError`` (status, message, ``param``, ``code``, ``type``), OpenAI's
error body, and the one mapping from engine errors to HTTP answers (``engine_errors``, ``error_for``), used by
plain and streamed responses alike.

Every error is a 4xx/5xx with the body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmx.engine import EngineBusyError, as_request_error

from .engine_loop import EngineDeadError, EngineError

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


def error_for(e: BaseException) -> APIError:
    """The API's answer to an exception raised while serving a request (engine errors, request errors)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, EngineBusyError):
        return busy_error(e)
    if isinstance(e, (ValueError, TypeError)):
        return user_error(e, "prompt")
    if isinstance(e, EngineDeadError):
        return APIError(503, str(e), None, "engine_dead", "server_error")
    if isinstance(e, EngineError):
        return APIError(500, str(e), None, "engine_error", "internal_error")
    raise e


def error_body(err: APIError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


async def engine_errors(awaitable):
    """Await ``awaitable`` (one or more engine requests, possibly in a TaskGroup), turning their errors into
    ``APIError``s."""
    try:
        return await awaitable
    except* (EngineError, EngineBusyError, ValueError, TypeError) as group:
        raise error_for(group.exceptions[0]) from None


def install_handlers(app: FastAPI) -> None:
    """OpenAI's error body for API errors, unknown routes, FastAPI's own validation and unexpected exceptions."""

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
