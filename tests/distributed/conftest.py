"""Tensor-parallel tests (issue 14): 2 ranks over Gloo on the CPU, tiny random fp32 models.

The worker processes are spawned once and reused by every tp=2 engine of the session (each test closes its
pipelines); the tests that kill a worker start a fresh pair.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ENGINE_TESTS = Path(__file__).resolve().parent.parent / "engine"
sys.path.insert(0, str(ENGINE_TESTS))
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pytest_collection_modifyitems(config, items):
    """One process per core: with a single core, tp=2 is refused (and the tests say so by skipping)."""
    if CPUS >= 2:
        return
    skip = pytest.mark.skip(reason=f"tp=2 needs 2 CPU cores, this machine gives {CPUS}")
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tp_models(tmp_path_factory):
    """name -> directory of a saved tiny model; built once."""
    from engine_helpers import make_tiny_model
    from test_internlm2 import write_internlm2

    cache = {}

    def get(name: str):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            if name == "internlm2":
                llama = make_tiny_model(tmp_path_factory.mktemp("internlm2-src"), "llama", "default", seed=3)
                write_internlm2(directory, llama)
            elif name == "llama-mqa":  # one KV head: 2 ranks replicate it
                make_tiny_model(directory, "llama", "default", seed=4, num_key_value_heads=1)
            elif name == "llama-tied":  # the LM head is the embedding (as SmolLM2's)
                make_tiny_model(directory, "llama", "default", seed=6, tie_word_embeddings=True)
            else:
                arch, rope = name.split("-")
                make_tiny_model(directory, arch, rope, seed=1)
            cache[name] = directory
        return cache[name]

    return get
