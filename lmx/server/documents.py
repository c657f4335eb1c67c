"""Documents for the chat page: text from TXT / Markdown / PDF uploads, token counts, middle truncation, and
the upload endpoint ``POST /v1/documents`` (``Documents``).

Middle truncation follows LongBench's ``pred.py`` (DESIGN §5): keep the first and the last ``budget // 2``
tokens, because the beginning and the end of a document usually say the most about it.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request

from .errors import APIError
from .guards import BodyTooLarge

if TYPE_CHECKING:
    from .context import ServerContext

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
PDF_SUFFIXES = (".pdf",)
SUPPORTED = TEXT_SUFFIXES + PDF_SUFFIXES


class DocumentTooLarge(ValueError):
    """A document past a limit (pages, extraction time): the server answers 413."""


def extract_text(filename: str, data: bytes, *, max_pages: int | None = None, timeout: float | None = None,
                 cancel: threading.Event | None = None) -> str:  # fmt: skip
    """The text of an uploaded file; ``ValueError`` naming the file for an unsupported or unreadable one,
    ``DocumentTooLarge`` for a PDF of more than ``max_pages`` pages or one whose text takes longer than
    ``timeout`` seconds (checked between pages; ``cancel`` set stops it there too)."""
    suffix = os.path.splitext(filename.lower())[1]
    if suffix in TEXT_SUFFIXES:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"file: {filename!r} is not UTF-8 text ({e})") from None
    if suffix in PDF_SUFFIXES:
        return _pdf_text(filename, data, max_pages, timeout, cancel)
    raise ValueError(f"file: expected one of {', '.join(SUPPORTED)}, got {filename!r}")


def _pdf_text(filename: str, data: bytes, max_pages: int | None, timeout: float | None,
              cancel: threading.Event | None) -> str:  # fmt: skip
    from pypdf import PdfReader

    def read(what: Callable[[], Any]) -> Any:
        try:
            return what()
        except Exception as e:  # noqa: BLE001 - a hostile file may make pypdf raise anything (its own limits too)
            raise ValueError(f"file: cannot read {filename!r} as PDF ({_pdf_problem(e)})") from None

    deadline = None if timeout is None else time.monotonic() + timeout
    reader = read(lambda: PdfReader(io.BytesIO(data)))
    if read(lambda: reader.is_encrypted) and not read(lambda: reader.decrypt("")):
        raise ValueError(f"file: {filename!r} is an encrypted PDF that needs a password")
    num_pages = read(lambda: len(reader.pages))
    if max_pages is not None and num_pages > max_pages:
        raise DocumentTooLarge(f"file: {filename!r} has {num_pages} pages, more than {max_pages} (--max-pdf-pages)")
    pages = []
    for i in range(num_pages):
        if (deadline is not None and time.monotonic() > deadline) or (cancel is not None and cancel.is_set()):
            raise DocumentTooLarge(f"file: extracting the text of {filename!r} took longer than {timeout:g} s "
                                   f"(--pdf-timeout; stopped at page {i + 1} of {num_pages})")  # fmt: skip
        pages.append(read(lambda i=i: reader.pages[i].extract_text()) or "")
    return "\n\n".join(p.strip() for p in pages if p.strip())


def _pdf_problem(e: Exception) -> str:
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

    if isinstance(e, LimitReachedError):
        return f"it passes one of pypdf's safety limits: {e}"
    if isinstance(e, (DependencyError, FileNotDecryptedError)):
        return f"unsupported encryption: {e}"
    if isinstance(e, NotImplementedError):
        return f"it uses a PDF feature pypdf does not support: {e}"
    return f"{type(e).__name__}: {e}"


def middle_truncate(token_ids: list[int], budget: int) -> list[int]:
    """Keep the first and last ``budget // 2`` tokens (LongBench), or everything when it fits."""
    if len(token_ids) <= budget:
        return token_ids
    half = budget // 2
    return token_ids[:half] + token_ids[len(token_ids) - half :]


class Documents:
    """``POST /v1/documents``: an uploaded document's text, fitted to the session."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

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
        self.ctx.need_tokenizer("file")
        max_chars, session_len = self.ctx.max_prompt_chars, self.ctx.session_len
        if len(text) > max_chars:
            raise APIError(413, f"file: {upload.filename!r} holds {len(text)} characters of text, more than "
                           f"{max_chars} (--max-prompt-chars)", "file", "document_too_large")  # fmt: skip
        ids = await self.ctx.encode(text, "file", add_special_tokens=False)
        budget = session_len - reserve
        if budget < 1:
            raise APIError(400, f"reserve: expected fewer than session_len={session_len} tokens, got {reserve}",
                           "reserve")  # fmt: skip
        kept = ids
        if len(ids) > budget:
            if not truncate:
                raise APIError(
                    400, f"file: {upload.filename!r} has {len(ids)} tokens; session_len {session_len} minus "
                    f"{reserve} reserved for the question and the answer leaves {budget}. Shorten it or choose "
                    "middle truncation.", "file", "document_too_long",
                )  # fmt: skip
            kept = middle_truncate(ids, budget)
            text = await asyncio.to_thread(self.ctx.tokenizer.decode, kept, skip_special_tokens=True)
        return {"filename": upload.filename, "text": text, "num_tokens": len(ids), "kept_tokens": len(kept),
                "truncated": len(kept) < len(ids), "session_len": session_len, "budget": budget}  # fmt: skip

    async def extract(self, filename: str, data: bytes) -> str:
        """The upload's text, extracted on a worker thread within ``--pdf-timeout`` and ``--max-pdf-pages``."""
        cancel = threading.Event()
        timeout = self.ctx.limits.pdf_timeout
        work = asyncio.to_thread(extract_text, filename, data, max_pages=self.ctx.limits.max_pdf_pages,
                                 timeout=timeout, cancel=cancel)  # fmt: skip
        try:
            return await asyncio.wait_for(work, timeout + 1.0)  # the thread checks its own deadline per page
        except DocumentTooLarge as e:
            raise APIError(413, str(e), "file", "document_too_large") from None
        except ValueError as e:
            raise APIError(400, str(e), "file", "unsupported_file") from None
        except TimeoutError:
            raise APIError(413, f"file: extracting the text of {filename!r} took longer than {timeout:g} s "
                           "(--pdf-timeout)", "file", "document_too_large") from None  # fmt: skip
        finally:
            cancel.set()


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
