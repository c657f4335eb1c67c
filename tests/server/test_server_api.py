"""The OpenAI-compatible API on a tiny random model: endpoints, echo logprobs, streaming, errors, auth, aborts."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest
from conftest import MODEL_NAME, SESSION_LEN, engine_config
from server_helpers import running_server

PROMPT = "the man said that the old house was near the water"


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_models_and_health(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == MODEL_NAME and models["data"][0]["max_model_len"] == SESSION_LEN


def test_health_and_metrics_report_the_prefix_cache(client):
    """A repeated prompt is served from cached KV blocks, and /metrics and /health say so."""
    before = client.get("/metrics").json()
    prompt = list(range(5, 5 + 3 * before["block_size"] + 3))  # three full blocks and a partial one
    for _ in range(2):
        body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 2, "temperature": 0}
        assert client.post("/v1/completions", json=body).status_code == 200
    after = client.get("/metrics").json()
    assert after["cached_tokens"] - before["cached_tokens"] >= 3 * before["block_size"]
    assert after["prompt_tokens"] - before["prompt_tokens"] == 2 * len(prompt)
    assert 0 < after["hit_rate"] <= 1 and after["cached_blocks"] >= 3
    cache = client.get("/health").json()["kv_cache"]
    assert set(cache) == {"hit_rate", "cached_blocks", "free_blocks", "num_blocks", "block_size", "capacity_tokens",
                          "kv_cache_dtype", "kv_cache_bytes"}  # fmt: skip
    assert 0 <= cache["free_blocks"] <= cache["num_blocks"]


def test_completion_text_and_token_ids_agree(client, tiny_pipe):
    from lmx import GenerationConfig

    ids = tiny_pipe.tokenizer.encode(PROMPT)
    by_text = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0}).json()
    by_ids = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 8, "temperature": 0}).json()
    expected = tiny_pipe(ids, gen_config=GenerationConfig(max_new_tokens=8)).text
    assert by_text["choices"][0]["text"] == by_ids["choices"][0]["text"] == expected
    assert by_text["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 8, "total_tokens": len(ids) + 8}
    assert by_text["choices"][0]["finish_reason"] == "length"


def test_batch_of_prompts_keeps_order(client):
    prompts = ["the man", "the old house was near", "water"]
    batch = client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 4, "temperature": 0}).json()
    singles = [client.post("/v1/completions", json={"prompt": p, "max_tokens": 4, "temperature": 0}).json()
               for p in prompts]  # fmt: skip
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2]
    assert [c["text"] for c in batch["choices"]] == [s["choices"][0]["text"] for s in singles]


def test_echo_logprobs_match_transformers_and_get_ppl(client, tiny_model_dir, tiny_pipe):
    """Prompt logprobs as lm-eval's local-completions reads them: leading null, then log p(token | prefix)."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = tiny_pipe.tokenizer.encode(PROMPT)
    body = {"prompt": ids, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 1 and logprobs["token_logprobs"][0] is None
    assert logprobs["top_logprobs"][0] is None and all(isinstance(t, dict) for t in logprobs["top_logprobs"][1:])
    assert choice["text"].startswith(tiny_pipe.tokenizer.decode(ids))
    prompt_logprobs = logprobs["token_logprobs"][1 : len(ids)]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        reference = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    expected = reference.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    assert prompt_logprobs == pytest.approx(expected, abs=2e-3)
    for value, top in zip(prompt_logprobs, logprobs["top_logprobs"][1 : len(ids)]):
        assert max(top.values()) >= value - 1e-6

    ppl = client.post("/get_ppl", json={"input_ids": ids}).json()
    assert ppl["mean_cross_entropy"][0] == pytest.approx(-sum(prompt_logprobs) / len(prompt_logprobs), abs=1e-4)
    assert ppl["perplexity"][0] == pytest.approx(math.exp(ppl["mean_cross_entropy"][0]), rel=1e-6)
    by_text = client.post("/get_ppl", json={"prompt": PROMPT}).json()
    assert by_text["mean_cross_entropy"] == pytest.approx(ppl["mean_cross_entropy"])

    zero = client.post("/v1/completions", json={**body, "max_tokens": 0}).json()["choices"][0]
    assert zero["logprobs"]["token_logprobs"] == logprobs["token_logprobs"][:-1]


def test_completion_stream_matches_non_stream(client):
    body = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    whole = client.post("/v1/completions", json=body).json()
    with client.stream("POST", "/v1/completions", json={**body, "stream": True,
                                                         "stream_options": {"include_usage": True}}) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"] == whole["usage"]
    text = "".join(e["choices"][0]["text"] for e in events[:-2])
    assert text == whole["choices"][0]["text"]
    assert events[-3]["choices"][0]["finish_reason"] == "length"


def test_chat_completion_stream_and_not(client, tiny_pipe):
    messages = [{"role": "system", "content": "answer the question"}, {"role": "user", "content": "what is water ?"}]
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 6, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["role"] == "assistant"
    assert whole["usage"]["prompt_tokens"] == len(tiny_pipe.encode(messages))
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        events = sse_events(r)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant" and events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == whole["choices"][0]["message"]["content"]
    logprobs = client.post("/v1/chat/completions", json={**body, "logprobs": True, "top_logprobs": 2}).json()
    content = logprobs["choices"][0]["logprobs"]["content"]
    assert len(content) == 6 and all(len(c["top_logprobs"]) == 2 for c in content)


def test_stop_words_and_seeded_sampling(client):
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    full = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    word = full.split()[3]
    stopped = client.post("/v1/completions", json={**body, "stop": [word]}).json()["choices"][0]
    assert stopped["finish_reason"] == "stop" and word not in stopped["text"] and full.startswith(stopped["text"])
    sampled = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 7}
    a = client.post("/v1/completions", json=sampled).json()["choices"][0]["text"]
    b = client.post("/v1/completions", json=sampled).json()["choices"][0]["text"]
    assert a == b


BAD_BODIES = [
    ("{not json", None, "JSON"),
    ("[1, 2]", None, "JSON object"),
    (json.dumps({"max_tokens": 4}), "prompt", "missing"),
    (json.dumps({"prompt": 5}), "prompt", "got integer 5"),
    (json.dumps({"prompt": "x", "max_tokens": "5"}), "max_tokens", 'got string "5"'),
    (json.dumps({"prompt": "x", "temperature": -1}), "temperature", "greater than or equal to 0"),
    (json.dumps({"prompt": "x", "top_p": 0}), "top_p", "greater than 0"),
    (json.dumps({"prompt": "x", "max_tokens": 0}), "max_tokens", "0 only with echo"),
    (json.dumps({"prompt": "x", "n": 2}), "n", "less than or equal to 1"),
    (json.dumps({"prompt": "x", "stream": "yes"}), "stream", "boolean"),
    (json.dumps({"prompt": "x", "best_of": 3}), "best_of", "less than or equal to 1"),
    (json.dumps({"prompt": "x", "unknown_field": 1}), "unknown_field", "unknown field"),
    (json.dumps({"prompt": [1, 2, 100000]}), "prompt", "token ids in [0, 512)"),
    (json.dumps({"prompt": list(range(1, 300))}), "prompt", "do not fit"),
    (json.dumps({"prompt": []}), "prompt", "non-empty"),
    (json.dumps({"prompt": "x", "stop": [""]}), "stop", "non-empty"),
]


@pytest.mark.parametrize("body, param, words", BAD_BODIES)
def test_bad_completion_requests_get_openai_errors(client, body, param, words):
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error


def test_other_client_errors(client):
    r = client.post("/v1/completions", json={"prompt": "x", "model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.role"
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = client.post("/get_ppl", json={"input_ids": [3]})
    assert r.status_code == 400 and "at least 2" in r.json()["error"]["message"]
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/v1/completions").status_code == 405
    # The server is still fine afterwards.
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_tokenizer_endpoints(client, tiny_pipe):
    tokens = client.post("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()["tokens"]
    assert tokens == tiny_pipe.tokenizer.encode(PROMPT, add_special_tokens=False)
    assert client.post("/detokenize", json={"tokens": tokens}).json()["prompt"] == tiny_pipe.tokenizer.decode(tokens)
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and "im_start" in info["chat_template"]


def wait_idle(app, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    engine = app.state.engine
    while engine.num_unfinished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.num_unfinished == 0


def test_client_disconnect_mid_stream_frees_cache(server):
    url, app = server
    blocks = app.state.engine.pipe.engine.block_manager
    wait_idle(app)
    free_before = blocks.num_free_blocks
    body = {"prompt": PROMPT, "max_tokens": 200, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            assert app.state.engine.num_unfinished == 1
    wait_idle(app)  # the abort reaches the engine within a step or two
    assert blocks.num_free_blocks == free_before
    with httpx.Client(base_url=url, timeout=60) as c:  # and the server goes on serving
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_client_disconnect_without_stream_frees_cache(server):
    url, app = server
    blocks = app.state.engine.pipe.engine.block_manager
    wait_idle(app)
    free_before = blocks.num_free_blocks
    # As many tokens as the session allows and a timeout far shorter than generating them takes, so the client
    # always leaves first (with 240 tokens and 0.3 s a quiet machine sometimes finished in time).
    max_tokens = SESSION_LEN - 32
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=0.05)
    wait_idle(app)
    assert blocks.num_free_blocks == free_before


def test_api_key(tiny_pipe):
    from lmx.server.app import create_app

    app = create_app(tiny_pipe, model_name=MODEL_NAME, api_key="sekret")
    with running_server(app) as url:
        body = {"prompt": "x", "max_tokens": 2}
        r = httpx.post(f"{url}/v1/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/").status_code == 200


def test_openai_python_client(server, tiny_pipe):
    from openai import OpenAI

    url, _ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL_NAME]
    completion = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5, temperature=0)
    assert completion.usage.completion_tokens == 5 and completion.choices[0].text
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "what is water ?"}], max_tokens=5, temperature=0,
    )  # fmt: skip
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "what is water ?"}], max_tokens=5, temperature=0,
        stream=True,
    )  # fmt: skip
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == chat.choices[0].message.content
    with pytest.raises(Exception) as info:
        client.completions.create(model="other", prompt="x")
    assert getattr(info.value, "status_code", None) == 404


def test_session_len_is_enforced_per_server(tiny_model_dir):
    from lmx import pipeline
    from lmx.server.app import create_app

    app = create_app(pipeline(tiny_model_dir, engine_config=engine_config(session_len=32)), model_name="short")
    with running_server(app) as url:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": list(range(1, 40)), "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        ok = httpx.post(f"{url}/v1/completions", json={"prompt": list(range(1, 20)), "max_tokens": 100}).json()
        assert ok["usage"]["total_tokens"] == 32 and ok["choices"][0]["finish_reason"] == "length"
