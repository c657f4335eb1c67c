"""Documents for the chat page: text from TXT / Markdown / PDF uploads, token counts, middle truncation.

Middle truncation follows LongBench's ``pred.py`` (DESIGN §5): keep the first and the last ``budget // 2``
tokens, because the beginning and the end of a document usually say the most about it.
"""

from __future__ import annotations

import io
import os

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
PDF_SUFFIXES = (".pdf",)
SUPPORTED = TEXT_SUFFIXES + PDF_SUFFIXES


def extract_text(filename: str, data: bytes) -> str:
    """The text of an uploaded file; ``ValueError`` naming the file for an unsupported or unreadable one."""
    suffix = os.path.splitext(filename.lower())[1]
    if suffix in TEXT_SUFFIXES:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"file: {filename!r} is not UTF-8 text ({e})") from None
    if suffix in PDF_SUFFIXES:
        return _pdf_text(filename, data)
    raise ValueError(f"file: expected one of {', '.join(SUPPORTED)}, got {filename!r}")


def _pdf_text(filename: str, data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"file: cannot read {filename!r} as PDF ({type(e).__name__}: {e})") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def middle_truncate(token_ids: list[int], budget: int) -> list[int]:
    """Keep the first and last ``budget // 2`` tokens (LongBench), or everything when it fits."""
    if len(token_ids) <= budget:
        return token_ids
    half = budget // 2
    return token_ids[:half] + token_ids[len(token_ids) - half :]
