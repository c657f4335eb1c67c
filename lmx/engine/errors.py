"""The errors an application sees from the engine, with what they are about as data.

``RequestError`` (a ``ValueError``) is a request's own fault: ``param`` names the argument responsible (``prompt``,
``prompts[2]``, ``input_ids``, ``stop_words``, ``random_seed``...), and ``code`` says what kind of fault it is
where an API needs to tell (``context_length_exceeded``). ``RequestTypeError`` is the same for a value of the
wrong type (also a ``TypeError``). ``EngineBusyError``: the waiting queue is full; nothing was queued.
"""

from __future__ import annotations

from .scheduler import EngineBusyError

__all__ = ["RequestError", "RequestTypeError", "EngineBusyError", "as_request_error"]

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


class RequestError(ValueError):
    """A request's own fault. ``str(e)`` is the whole message ("param: expected ..., got ...")."""

    def __init__(self, param: str | None, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class RequestTypeError(RequestError, TypeError):
    """A request's argument of the wrong type."""


def as_request_error(error: Exception) -> RequestError:
    """``error`` as a ``RequestError``: itself, or (a plain ``ValueError``/``TypeError`` from below the engine's
    own checks) one that names no parameter."""
    if isinstance(error, RequestError):
        return error
    cls = RequestTypeError if isinstance(error, TypeError) else RequestError
    return cls(None, str(error))
