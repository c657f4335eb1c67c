"""SSE streams add up: the streamed pieces of /v1/completions and /v1/chat/completions concatenate to the
non-streamed answer, with and without stop words, across multi-byte characters (a tiny random Llama with a
byte-level BPE tokenizer, from tests/engine/test_streaming.py, next to the word-level chat model of conftest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
from conftest import engine_config
from server_helpers import running_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_streaming import make_bytelevel_model  # noqa: E402


def sse_texts(response: httpx.Response, chat: bool) -> tuple[list[str], str | None]:
    pieces, finish = [], None
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: ") :])
        assert "error" not in event, event
        for choice in event["choices"]:
            pieces.append(choice["delta"].get("content", "") if chat else choice["text"])
            finish = choice["finish_reason"] or finish
    return pieces, finish


def streamed_and_whole(client: httpx.Client, path: str, body: dict) -> tuple[list[str], str, str, str | None]:
    chat = path.endswith("chat/completions")
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        pieces, finish = sse_texts(r, chat)
    whole = client.post(path, json=body).json()["choices"][0]
    text = whole["message"]["content"] if chat else whole["text"]
    assert finish == whole["finish_reason"]
    return pieces, text, finish, whole


@pytest.fixture(scope="module")
def bytelevel_client(tmp_path_factory):
    from lmx import pipeline
    from lmx.server import create_app

    directory = make_bytelevel_model(tmp_path_factory.mktemp("bytelevel-server"))
    app = create_app(pipeline(directory, engine_config=engine_config()), model_name="bytelevel")
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def chat_client(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client


@pytest.mark.parametrize("prompt", ["東京は", "naïve café", "The capital of France is"])
def test_completion_stream_adds_up_across_multibyte_characters(bytelevel_client, prompt):
    body = {"prompt": prompt, "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    pieces, text, finish, _ = streamed_and_whole(bytelevel_client, "/v1/completions", body)
    assert "".join(pieces) == text and finish == "length"
    assert any(ord(c) > 127 for c in text)
    assert not any(p.endswith("\ufffd") for p in pieces[:-1]), "half a character was streamed"
    # A stop word from the middle of that answer cuts the stream and the answer alike.
    clean = [i for i in range(len(text) // 3, len(text) - 3) if "\ufffd" not in text[i : i + 3]]
    stop = text[clean[0] : clean[0] + 3]
    pieces, cut, finish, _ = streamed_and_whole(bytelevel_client, "/v1/completions", {**body, "stop": [stop]})
    assert "".join(pieces) == cut == text[: text.find(stop)] and finish == "stop"


def test_seeded_sampled_stream_adds_up(bytelevel_client):
    body = {"prompt": "naïve", "max_tokens": 40, "temperature": 1.0, "seed": 7, "ignore_eos": True, "stop": ["é"]}
    pieces, text, _, _ = streamed_and_whole(bytelevel_client, "/v1/completions", body)
    assert "".join(pieces) == text and "é" not in text


def test_chat_stream_adds_up_with_and_without_stop_words(chat_client):
    body = {"messages": [{"role": "user", "content": "the man said"}], "max_tokens": 24, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    # Once first, so the streamed and the whole answer both start from the prompt's cached blocks: a prefix-cache
    # hit recomputes the prompt's last rows in a smaller chunk (other kernels, other low bits), and this random
    # tiny model's near-tied logits can turn on those.
    chat_client.post("/v1/chat/completions", json=body).raise_for_status()
    pieces, text, _, _ = streamed_and_whole(chat_client, "/v1/chat/completions", body)
    assert "".join(pieces) == text and len(text.split()) > 4
    stop = " ".join(text.split()[2:4])  # two words: a stop word that spans tokens
    pieces, cut, finish, _ = streamed_and_whole(chat_client, "/v1/chat/completions", {**body, "stop": stop})
    assert "".join(pieces) == cut == text[: text.find(stop)] and finish == "stop"
