"""The OpenAI-compatible HTTP server (DESIGN §6): ``create_app(pipe)`` returns a FastAPI app.

This module only wires the app: the middlewares of ``guards``, the error handlers of ``errors``, and the endpoints,
one module per concern:

* ``completions``: ``POST /v1/completions`` and LMDeploy's ``POST /get_ppl``
* ``chat``: ``POST /v1/chat/completions``
* ``tokens``: vLLM's ``/tokenize``, ``/detokenize`` and ``/tokenizer_info`` (lm-eval's remote tokenizer)
* ``documents``: the document-chat page's upload, ``POST /v1/documents``
* here: ``GET /health`` (with the KV cache's hit rate and free blocks), ``GET /metrics`` (``Pipeline.metrics``),
  ``GET /v1/models`` and the page itself at ``/``

Every error is a 4xx/5xx with OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .chat import Chat
from .completions import Completions
from .context import ServerContext
from .documents import Documents
from .engine_loop import AsyncEngine
from .errors import install_handlers
from .guards import APIKeyMiddleware, BodyLimitMiddleware, HostCheckMiddleware, ServerLimits
from .tokens import Tokens

STATIC_DIR = Path(__file__).with_name("static")


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
    ctx = ServerContext(engine, model_name, limits)
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
    install_handlers(app)

    @app.get("/health")
    async def health():
        dead = engine.dead_reason
        if dead is not None:
            error = {"message": f"engine: the engine thread has stopped ({dead}); restart the server",
                     "type": "server_error", "param": None, "code": "engine_dead"}  # fmt: skip
            return JSONResponse({"status": "error", "model": model_name, "error": error}, status_code=503)
        m = engine.metrics()
        keys = ("hit_rate", "cached_blocks", "free_blocks", "num_blocks", "block_size", "capacity_tokens",
                "kv_cache_dtype", "kv_cache_bytes")  # fmt: skip
        cache = {k: m[k] for k in keys if k in m}
        return {"status": "ok", "model": model_name, "requests_in_engine": engine.num_unfinished, "kv_cache": cache}

    @app.get("/metrics")
    async def metrics() -> dict:
        return {"model": model_name, **engine.metrics()}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": ctx.created, "owned_by": "lmx",
                "max_model_len": ctx.session_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    completions, chat, tokens, documents = Completions(ctx), Chat(ctx), Tokens(ctx), Documents(ctx)
    app.post("/v1/completions")(completions.completions)
    app.post("/get_ppl")(completions.get_ppl)
    app.post("/v1/chat/completions")(chat.chat_completions)
    app.post("/tokenize")(tokens.tokenize)
    app.post("/detokenize")(tokens.detokenize)
    app.get("/tokenizer_info")(tokens.tokenizer_info)
    app.post("/v1/documents")(documents.upload_document)
    app.get("/", include_in_schema=False)(lambda: FileResponse(STATIC_DIR / "index.html"))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
