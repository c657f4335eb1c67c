"""The bridge between asyncio request handlers and the engine: one thread steps the engine, handlers await.

The engine is not thread-safe, so exactly one thread (``lmx-engine``) steps the ``Pipeline``. Handlers submit commands
(add a request, abort one) through a queue; the thread runs them between steps, steps the engine while anything
is unfinished, and hands each request's news back to its event loop with ``call_soon_threadsafe``. Concurrent
HTTP requests therefore share the engine's continuous batch instead of waiting for each other.

A request whose consumer goes away (a client that disconnects, a cancelled task) is aborted, which frees its
KV-cache blocks. A step that fails ends only the requests of that step (the engine's contract); the others go on.
A command that fails is logged and fails only its own request. Should the thread itself die, every request
waiting on it gets an error, new ones are refused, and ``dead_reason`` says why (``/health`` answers 503).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from lmx.engine import EngineBusyError, RequestError, Response

# Logprob of a token: (its logprob, {token id: logprob} of the top k tokens at that position).
TokenLogprob = tuple[float, dict[int, float]]

log = logging.getLogger("lmx.server")


class EngineError(RuntimeError):
    """The engine failed while running this request (the message says why); other requests are unaffected."""


class EngineDeadError(EngineError):
    """The engine thread has stopped; no request can be served until the server restarts."""


@dataclasses.dataclass(eq=False)
class _Request:
    kind: str  # "generate", "score" (per-token logprobs) or "ppl" (mean cross-entropy)
    sink: Callable[[Any], None]  # called on the engine thread with a delta, a result or an exception
    seq: Any = None
    stream: Any = None  # generation: the request's OutputStream (what was already sent)
    cancelled: bool = False


class AsyncEngine:
    """Owns a ``Pipeline`` and the thread that steps its engine; ``start()`` before use, ``shutdown()`` after."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], _Request]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._requests: dict[int, _Request] = {}  # seq_id -> request, engine thread only
        self.dead_reason: str | None = None  # set when the engine thread has died
        self._thread = threading.Thread(target=self._run, name="lmx-engine", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)

    @property
    def num_unfinished(self) -> int:
        """Requests in the engine (waiting or running); read from any thread, for health checks and tests."""
        return self.pipe.num_unfinished

    def metrics(self) -> dict:
        """The engine's counters (``Pipeline.metrics``: queue, KV blocks, prefix-cache hits); read from any thread."""
        return self.pipe.metrics()

    # -- the asyncio side ----------------------------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], gen_config) -> AsyncIterator[Response]:
        """Yield ``Response`` deltas until the request finishes (their texts add up to the whole answer); closing
        the iterator early aborts the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        request = _Request("generate", lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        self._submit(request, lambda: self._add(request, lambda: self.pipe.add_request(prompt_ids, gen_config)))
        finished = False
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise event
                finished = event.finish_reason is not None
                yield event
                if finished:
                    return
        finally:
            if not finished:
                self._submit(request, lambda: self._abort(request), quiet=True)

    async def score(self, input_ids: list[int], top_k: int = 0) -> list[TokenLogprob]:
        """Logprob (and top ``top_k``) of tokens 1..n-1 of ``input_ids`` given the tokens before each."""
        return await self._one_shot("score", lambda: self.pipe.add_scoring_request(input_ids, top_logprobs=top_k))

    async def ppl(self, input_ids: list[int]) -> float:
        """Mean cross-entropy of ``input_ids`` (LMDeploy's ``get_ppl``)."""
        return await self._one_shot("ppl", lambda: self.pipe.add_scoring_request(input_ids))

    async def _one_shot(self, kind: str, add: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def sink(result: Any) -> None:
            def deliver() -> None:
                if future.done():
                    return
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

            loop.call_soon_threadsafe(deliver)

        request = _Request(kind, sink)
        self._submit(request, lambda: self._add(request, add))
        try:
            return await future
        except asyncio.CancelledError:
            self._submit(request, lambda: self._abort(request), quiet=True)
            raise

    def _submit(self, request: _Request, command: Callable[[], None], *, quiet: bool = False) -> None:
        """Queue ``command`` (about ``request``) for the engine thread; ``quiet``: an abort, which nobody waits
        for, so a dead or stopping engine is no error."""
        if self.dead_reason is not None or self._stopping:
            if quiet:
                return
            if self.dead_reason is not None:
                raise EngineDeadError(f"the engine thread has stopped ({self.dead_reason})")
            raise EngineError("the engine is shutting down")
        self._commands.put((command, request))
        self._wake.set()

    # -- the engine thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug outside any one request: say so, and fail everyone who waits
            self.dead_reason = f"{type(e).__name__}: {e}"
            log.exception("lmx engine thread died")
            error = EngineDeadError(f"the engine thread has stopped ({self.dead_reason})")
            for request in list(self._requests.values()):
                request.sink(error)
            self._requests.clear()
            while True:
                try:
                    _, request = self._commands.get_nowait()
                except queue.Empty:
                    break
                request.sink(error)
            return
        for request in list(self._requests.values()):
            self._abort(request)
            request.sink(EngineError("the server is shutting down"))

    def _loop(self) -> None:
        while not self._stopping:
            self._drain_commands()
            if not self.pipe.has_unfinished():
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                updated = self.pipe.step()
            except ConnectionError:  # a tensor-parallel rank is lost (WorkerLostError): the engine cannot go on
                raise
            except Exception as e:  # the engine ended the step's requests with finish_reason "error"
                log.exception("lmx engine step failed")
                self._fail_finished(EngineError(f"engine step failed: {type(e).__name__}: {e}"))
                continue
            self._publish(updated)

    def _drain_commands(self) -> None:
        while True:
            try:
                command, request = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except Exception as e:  # fails this request only; the thread goes on
                log.exception("lmx engine command failed")
                self._forget(request)
                request.sink(EngineError(f"engine command failed: {type(e).__name__}: {e}"))

    def _forget(self, request: _Request) -> None:
        request.cancelled = True
        seq = request.seq
        if seq is not None:
            self._requests.pop(seq.seq_id, None)
            if not seq.is_finished:
                try:
                    self.pipe.abort(seq)
                except Exception:  # noqa: BLE001 - already failing; the request is dropped either way
                    log.exception("lmx engine: abort after a failed command failed too")

    def _add(self, request: _Request, add: Callable[[], Any]) -> None:
        if request.cancelled:
            return
        try:
            request.seq = add()
        except (ValueError, TypeError, EngineBusyError) as e:  # the request's own fault: nothing was queued
            request.sink(e)
            return
        except Exception as e:  # a bug: say so, fail this request only
            log.exception("lmx engine: adding a request failed")
            request.sink(EngineError(f"engine command failed: {type(e).__name__}: {e}"))
            return
        self._requests[request.seq.seq_id] = request

    def _abort(self, request: _Request) -> None:
        request.cancelled = True
        seq = request.seq
        if seq is None:
            return
        self._requests.pop(seq.seq_id, None)
        self.pipe.abort(seq)

    def _fail_finished(self, error: Exception) -> None:
        for seq_id, request in list(self._requests.items()):
            if request.seq.is_finished:
                del self._requests[seq_id]
                request.sink(error)

    def _publish(self, updated: list) -> None:
        for seq in updated:
            request = self._requests.get(seq.seq_id)
            if request is None:
                continue
            try:
                self._publish_one(request, seq)
            except Exception as e:  # a bug in one request's bookkeeping must not stop the engine thread
                self._abort(request)
                request.sink(EngineError(f"request failed: {type(e).__name__}: {e}"))

    def _publish_one(self, request: _Request, seq) -> None:
        if seq.finish_reason == "error" and seq.error:  # this request's own sampling failed: a user error
            self._requests.pop(seq.seq_id, None)
            request.sink(RequestError(seq.error_param, seq.error))
            return
        if request.kind == "generate":
            delta = self._delta(request, seq)
            if delta is not None:
                request.sink(delta)
        elif seq.is_finished:
            result = self.pipe.prompt_logprobs(seq) if request.kind == "score" else seq.nll_sum / seq.nll_count
            request.sink(result)
        if seq.is_finished:
            self._requests.pop(seq.seq_id, None)

    def _delta(self, request: _Request, seq) -> Response | None:
        if request.stream is None:
            request.stream = self.pipe.output_stream(seq)
        return request.stream.next()
