"""Output of the evaluations: terminal tables (stdout), progress bars (stderr), JSON files."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> str:
    """A plain-text table with right-aligned numbers, readable in any terminal and in a README."""
    cells = [[_cell(v) for v in row] for row in rows]
    header = [str(h) for h in headers]
    widths = [max([len(header[i])] + [len(r[i]) for r in cells]) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out += [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-2) else f"{value:.2f}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return False
    return True


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    print(format_table(headers, rows, title=title), flush=True)


def progress(total: int, description: str):
    """A progress bar on stderr (tqdm), hidden when ``LMX_NO_PROGRESS`` is set."""
    from tqdm.auto import tqdm

    disable = bool(os.environ.get("LMX_NO_PROGRESS"))
    return tqdm(total=total, desc=description, file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False)


def write_json(directory: str | os.PathLike, name: str, payload: Any) -> Path:
    """Write ``payload`` to ``directory/name`` (creating the directory); returns the path."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def prepare_output(directory: str | os.PathLike | None) -> Path | None:
    """Create ``--output DIR`` up front, so a bad path fails before minutes of work."""
    if directory is None:
        return None
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output: cannot create the directory {str(directory)!r} ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"--output: the directory {str(directory)!r} is not writable")
    return path


def say_written(paths: Iterable[Path]) -> None:
    for path in paths:
        print(f"wrote {path}", flush=True)
