"""Documents for the chat page: text from TXT / Markdown / PDF uploads, token counts, middle truncation.

Middle truncation follows LongBench's ``pred.py`` (DESIGN §5): keep the first and the last ``budget // 2``
tokens, because the beginning and the end of a document usually say the most about it.
"""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Any, Callable

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
        pages.append(read(lambda: reader.pages[i].extract_text()) or "")
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
