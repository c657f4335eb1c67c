"""``lmx.server``: the OpenAI-compatible server and the document-chat page (DESIGN §6).

    lmx serve MODEL --session-len 16384 --port 23333        # or: python -m lmx.server MODEL ...

``create_app(pipe, model_name=...)`` builds the FastAPI app for embedding in another ASGI server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'lmx.server' has no attribute {name!r}")
