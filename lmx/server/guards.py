"""What keeps one client (or one web page) from hurting the server: limits, and checks of who is asking.

``ServerLimits`` bounds the work and memory of one request; ``lmx serve`` sets each field from a flag. The ASGI
middlewares here are pure ASGI (streaming and disconnect detection pass through untouched) and answer with
OpenAI's error body:

* ``HostCheckMiddleware``: the ``Host`` header must name the bound address, ``localhost`` or an
  ``--allowed-hosts`` name (a web page that rebinds its own DNS name to 127.0.0.1 sends its own name: 421), and a
  browser's ``Origin`` must be this server itself or an ``--allowed-origins`` origin (403).
* ``BodyLimitMiddleware``: a body over the limit is refused from ``Content-Length`` before it is read (413), and
  counted while it streams in when there is no ``Content-Length``.
* ``APIKeyMiddleware``: ``Authorization: Bearer KEY``, compared in constant time.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

MiB = 1024 * 1024
PUBLIC_PATHS = ("/", "/health", "/favicon.ico")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UPLOAD_PATH = "/v1/documents"
CHARS_PER_TOKEN = 16  # the default prompt-character limit is this many characters per token of session_len


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Bounds on one request. ``max_prompt_chars=None``: ``CHARS_PER_TOKEN`` x the session length."""

    max_body_bytes: int = 32 * MiB  # JSON request bodies
    max_upload_bytes: int = 64 * MiB  # document uploads (multipart)
    max_prompt_chars: int | None = None  # characters of one prompt (or chat, or document), before tokenizing
    max_prompts_per_request: int = 64  # prompts in one /v1/completions or /get_ppl request
    max_pdf_pages: int = 1000
    pdf_timeout: float = 60.0  # seconds of PDF text extraction

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name == "max_prompt_chars":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"{field.name}: expected a positive finite number, got {value!r}")

    def prompt_chars(self, session_len: int) -> int:
        return self.max_prompt_chars or CHARS_PER_TOKEN * session_len


def error_body(status: int, message: str, param=None, code=None, type="invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


async def send_error(send, status: int, message: str, code: str, *, headers: Iterable = (), param=None) -> None:
    body = error_body(status, message, param, code)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def _host_name(host: str) -> str:
    """``'[::1]:8000'`` -> ``'::1'``, ``'Example.com:80'`` -> ``'example.com'``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheckMiddleware:
    """421 for a ``Host`` that is not this server's; 403 for a browser ``Origin`` that is neither this server nor
    an allowed origin. ``allowed_hosts`` may hold ``*`` (any host: for a server behind a proxy that checks it)."""

    def __init__(self, app, *, bind_host: str, allowed_hosts: Iterable[str] = (),
                 allowed_origins: Iterable[str] = ()) -> None:  # fmt: skip
        self.app = app
        bind = _host_name(bind_host)
        extra = [_host_name(h) for h in allowed_hosts]
        self.any_host = "*" in extra
        self.hosts = {bind, *LOOPBACK_NAMES, *extra}
        # Bound to every interface: the machine's own addresses are not known here, but a page can only rebind a
        # DNS *name*, so any IP-literal Host is as safe as the bound address.
        self.any_ip = bind in ("0.0.0.0", "::", "")
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.any_origin = "*" in self.origins

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = _header(scope, b"host") or ""
        name = _host_name(host)
        if not (self.any_host or name in self.hosts or (self.any_ip and _is_ip(name))):
            message = (f"Host: expected this server's address ({', '.join(sorted(self.hosts))}) or a name given "
                       f"to --allowed-hosts, got {host!r}")  # fmt: skip
            return await send_error(send, 421, message, "invalid_host")
        origin = _header(scope, b"origin")
        if origin is not None and not self._origin_ok(origin, host):
            message = (f"Origin: expected this server's own page or an origin given to --allowed-origins, "
                       f"got {origin!r}")  # fmt: skip
            return await send_error(send, 403, message, "origin_not_allowed")
        return await self.app(scope, receive, send)

    def _origin_ok(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if self.any_origin or origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body without ``Content-Length`` passes its limit."""

    def __init__(self, limit: int, flag: str) -> None:
        super().__init__(f"body: expected at most {limit} bytes ({flag}), got more")
        self.limit, self.flag = limit, flag


class BodyLimitMiddleware:
    """413 for a request body over ``max_body_bytes`` (``max_upload_bytes`` for uploads)."""

    def __init__(self, app, *, limits: ServerLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == UPLOAD_PATH:
            limit, flag = self.limits.max_upload_bytes, "--max-upload-bytes"
        else:
            limit, flag = self.limits.max_body_bytes, "--max-body-bytes"
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await send_error(send, 400, f"Content-Length: expected an integer, got {length!r}",
                                        "invalid_header")  # fmt: skip
            if declared > limit:
                return await send_error(send, 413, f"body: expected at most {limit} bytes ({flag}), got {declared}",
                                        "request_too_large")  # fmt: skip
            return await self.app(scope, receive, send)

        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, flag)
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as e:
            if started:
                raise
            await send_error(send, 413, str(e), "request_too_large")


class APIKeyMiddleware:
    """401 without ``Authorization: Bearer KEY`` on every path but the page, its assets and ``/health``."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            return await self.app(scope, receive, send)
        auth = (_header(scope, b"authorization") or "").encode("latin-1")
        if not hmac.compare_digest(auth, self.expected):
            got = "no Authorization header" if not auth else "a different key"
            return await send_error(send, 401, f"Authorization: expected 'Bearer <the server's --api-key>', got {got}",
                                    "invalid_api_key")  # fmt: skip
        return await self.app(scope, receive, send)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")
