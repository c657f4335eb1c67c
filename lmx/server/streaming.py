"""Server-sent events: ``EventStream`` (stops, and aborts its requests, when the client goes away), ``sse`` (one
event), ``stream_error`` (an error inside a stream whose 200 is already sent) and ``cancel_on_disconnect`` (the
same for a non-streamed request)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from .errors import error_body, error_for


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


def stream_error(e: Exception) -> str:
    """An error inside an SSE stream (its 200 is already sent): the same body a non-streamed request would get."""
    return sse(error_body(error_for(e)))
