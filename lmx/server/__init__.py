"""``lmx.server``: the OpenAI-compatible server and the document-chat page (DESIGN §6).

    lmx serve MODEL --session-len 16384 --port 23333        # or: python -m lmx.server MODEL ...

``create_app(pipe, model_name=...)`` builds the FastAPI app for embedding in another ASGI server.

Modules: ``cli`` (``lmx serve``: options, start-up), ``app`` (wires everything), ``engine_loop`` (the thread that
steps the ``Pipeline``), ``context`` (checks every endpoint shares), ``completions``, ``chat``, ``tokens`` and
``documents`` (the endpoints), ``protocol`` (request bodies), ``errors`` (OpenAI's error body, engine errors as
HTTP answers), ``streaming`` (server-sent events), ``guards`` (limits, Host/Origin and API-key checks).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'lmx.server' has no attribute {name!r}")
