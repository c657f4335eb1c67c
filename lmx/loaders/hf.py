"""Hugging Face checkpoint directories: ``config.json`` plus safetensors (one file or sharded with an index)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a JSON object in {path}, got {type(data).__name__}")
    return data


def load_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"model: expected a Hugging Face directory with config.json, {model_dir} has none")
    return read_json(path, "config.json")


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "model.safetensors.index.json").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"model.safetensors.index.json: expected a non-empty 'weight_map' in {index}")
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"model: the index names shards that are not in {model_dir}: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model: expected *.safetensors weights in {model_dir}, found none")
    return files


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every file, one at a time (each file is memory-mapped, never read whole)."""
    from safetensors import safe_open

    for file in files:
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
            raise ValueError(f"weights: cannot read {file} as safetensors ({e})") from None
        with handle as f:
            for name in f.keys():
                try:
                    tensor = f.get_tensor(name)
                except Exception as e:
                    raise ValueError(f"weights: tensor {name!r} of {file} is unreadable ({e})") from None
                yield name, tensor


def checkpoint_dtype(config: dict[str, Any]) -> torch.dtype | None:
    name = config.get("dtype") or config.get("torch_dtype")
    return getattr(torch, name, None) if isinstance(name, str) else None


def eos_token_ids(model_dir: Path, config: dict[str, Any]) -> list[int]:
    """EOS ids from generation_config.json (preferred, as transformers' generate) or config.json."""
    eos = None
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = read_json(gen, "generation_config.json").get("eos_token_id")
    if eos is None:
        eos = config.get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
