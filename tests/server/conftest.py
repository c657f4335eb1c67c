"""Fixtures of the server tests: one tiny model directory and one live server for the whole directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_helpers import make_tiny_chat_model, running_server  # noqa: E402

MODEL_NAME = "tiny-llama"
SESSION_LEN = 256


def engine_config(**overrides):
    from lmx import EngineConfig

    kwargs = dict(dtype="float32", device="cpu", block_size=16, num_blocks=256, max_batch_size=32,
                  session_len=SESSION_LEN, num_threads=1)  # fmt: skip
    kwargs.update(overrides)
    return EngineConfig(**kwargs)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat-model"))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from lmx import pipeline

    return pipeline(tiny_model_dir, engine_config=engine_config())


@pytest.fixture(scope="session")
def server(tiny_model_dir):
    """(base_url, app) of a server on its own pipeline, shared by the tests that do not need special options."""
    from lmx import pipeline
    from lmx.server.app import create_app

    app = create_app(pipeline(tiny_model_dir, engine_config=engine_config()), model_name=MODEL_NAME)
    with running_server(app) as url:
        yield url, app
