"""No request can hurt the others, and no web page can use the server: ranges, per-request sampling failures,
limits (413/503), Content-Type, Host and Origin checks, CORS, the API key, hostile files, and a truthful /health."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time

import httpx
import pytest
from conftest import engine_config
from server_helpers import running_server

from lmx import GenerationConfig, pipeline
from lmx.server import guards
from lmx.server.app import create_app
from lmx.server.errors import user_error
from lmx.server.guards import ServerLimits

PROMPT = "the man said that the old house was near the water"


@contextlib.contextmanager
def serve(tiny_model_dir, *, config=None, **kwargs):
    """A server on its own pipeline: (base_url, app)."""
    pipe = pipeline(tiny_model_dir, engine_config=config or engine_config())
    app = create_app(pipe, model_name="tiny", **kwargs)
    with running_server(app) as url:
        yield url, app


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


# -- 3. one bad request never fails another -------------------------------------------------------------------------

RANGE_ERRORS = [
    ('{"prompt": "x", "seed": 18446744073709551616}', "seed"),
    ('{"prompt": "x", "seed": -1}', "seed"),
    ('{"prompt": "x", "repetition_penalty": 1e-300}', "repetition_penalty"),
    ('{"prompt": "x", "repetition_penalty": 1e300}', "repetition_penalty"),
    ('{"prompt": "x", "temperature": NaN}', "temperature"),
    ('{"prompt": "x", "top_p": Infinity}', "top_p"),
    ('{"prompt": "x", "temperature": 1e999}', "temperature"),
    ('{"prompt": "x", "top_k": 1099511627776}', "top_k"),
    ('{"prompt": "x", "max_tokens": 1099511627776}', "max_tokens"),
    ('{"prompt": "x", "logprobs": 21}', "logprobs"),
    ('{"prompt": "x", "presence_penalty": 1.5}', "presence_penalty"),
    ('{"prompt": "x", "frequency_penalty": -1}', "frequency_penalty"),
]


@pytest.mark.parametrize("body, field", RANGE_ERRORS)
def test_sampling_ranges_are_checked_at_the_api(server, body, field):
    url, _ = server
    error = error_of(httpx.post(f"{url}/v1/completions", content=body, headers={"content-type": "application/json"}),
                     400)  # fmt: skip
    assert error["param"] == field and field in error["message"], error


def test_a_poisoned_request_fails_alone_and_the_others_are_unchanged(server):
    """Three HTTP requests and one poisoned request (bypassing the API's checks) run at once; the poisoned one
    gets a user error naming its field, the three get exactly their solo tokens."""
    url, app = server
    bodies = [{"prompt": PROMPT, "max_tokens": 24, "ignore_eos": True, "temperature": 0.9, "seed": 11},
              {"prompt": "the water is big", "max_tokens": 24, "ignore_eos": True, "temperature": 0},
              {"prompt": "one two three", "max_tokens": 24, "ignore_eos": True, "top_p": 0.7, "seed": 5,
               "repetition_penalty": 1.2}]  # fmt: skip

    def complete(body):
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    solo = [complete(b) for b in bodies]
    engine = app.state.engine
    poison = GenerationConfig(max_new_tokens=24, do_sample=True, ignore_eos=True)
    object.__setattr__(poison, "repetition_penalty", 1e-300)  # past GenerationConfig's own check
    ids = engine.tokenizer.encode(PROMPT)

    async def poisoned() -> Exception:
        try:
            async for _ in engine.generate(ids, poison):
                pass
        except Exception as e:  # noqa: BLE001 - the test inspects it
            return e
        raise AssertionError("the poisoned request finished without an error")

    results: list = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, complete(bodies[i]))) for i in range(3)]
    for t in threads:
        t.start()
    error = asyncio.run(poisoned())
    for t in threads:
        t.join()
    assert isinstance(error, ValueError) and str(error).startswith("repetition_penalty:"), error
    answer = user_error(error, "prompt")
    assert answer.status == 400 and answer.param == "repetition_penalty"
    assert results == solo
    assert engine.num_unfinished == 0


# -- 4. bounded work and memory -------------------------------------------------------------------------------------

LIMITS = ServerLimits(max_body_bytes=4096, max_upload_bytes=8192, max_prompt_chars=1000, max_prompts_per_request=3,
                      max_pdf_pages=2)  # fmt: skip


@pytest.fixture(scope="module")
def limited(tiny_model_dir):
    with serve(tiny_model_dir, limits=LIMITS) as (url, app):
        yield url, app


def test_body_size_is_checked_before_reading(limited):
    url, _ = limited
    body = json.dumps({"prompt": "x " * 3000})
    error = error_of(httpx.post(f"{url}/v1/completions", content=body, headers={"content-type": "application/json"}),
                     413)  # fmt: skip
    assert "--max-body-bytes" in error["message"] and str(len(body)) in error["message"]

    def chunks():  # no Content-Length: counted while it streams in
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(f"{url}/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert "--max-body-bytes" in error_of(r, 413)["message"]
    small = httpx.post(f"{url}/v1/completions", json={"prompt": "the water", "max_tokens": 2})
    assert small.status_code == 200, small.text


def test_prompt_characters_and_count_are_checked_before_tokenizing(limited, monkeypatch):
    url, app = limited
    calls = []
    tokenizer = app.state.engine.tokenizer
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: calls.append(1) or [5])
    error = error_of(httpx.post(f"{url}/v1/completions", json={"prompt": "w" * 1001}), 413)
    assert error["param"] == "prompt" and "--max-prompt-chars" in error["message"] and "1001" in error["message"]
    error = error_of(httpx.post(f"{url}/v1/completions", json={"prompt": ["a", "b", "c" * 1001]}), 413)
    assert error["param"] == "prompt[2]"
    error = error_of(httpx.post(f"{url}/v1/chat/completions",
                                json={"messages": [{"role": "user", "content": "w" * 600}] * 2}), 413)  # fmt: skip
    assert error["param"] == "messages"
    error = error_of(httpx.post(f"{url}/tokenize", json={"prompt": "w" * 1001}), 413)
    assert error["param"] == "prompt"
    error = error_of(httpx.post(f"{url}/v1/completions", json={"prompt": [[1, 2]] * 4}), 413)
    assert "--max-prompts-per-request" in error["message"] and "got 4" in error["message"]
    error = error_of(httpx.post(f"{url}/get_ppl", json={"input_ids": [[1, 2]] * 4}), 413)
    assert error["param"] == "input_ids"
    assert calls == []


def test_full_waiting_queue_answers_503_with_retry_after(tiny_model_dir, monkeypatch):
    with serve(tiny_model_dir, config=engine_config(max_queued_requests=1, max_batch_size=1)) as (url, app):
        engine = app.state.engine.pipe.engine
        gate, real_step = threading.Event(), engine.step

        def held_step():  # the engine thread waits here, so the first request stays in the queue
            gate.wait(60)
            return real_step()

        monkeypatch.setattr(engine, "step", held_step)
        first: list = []
        thread = threading.Thread(
            target=lambda: first.append(
                httpx.post(f"{url}/v1/completions", json={"prompt": "the water", "max_tokens": 2}, timeout=120)
            )
        )
        thread.start()
        deadline = time.monotonic() + 30
        while len(engine.scheduler.waiting) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for body in ({"prompt": "the man", "max_tokens": 2}, {"prompt": "the man", "max_tokens": 2, "stream": True}):
            r = httpx.post(f"{url}/v1/completions", json=body)
            error = error_of(r, 503)
            assert r.headers["retry-after"] == "1" and "--max-queued-requests" in error["message"]
        error_of(httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}),
                 503)  # fmt: skip
        error_of(httpx.post(f"{url}/get_ppl", json={"input_ids": [1, 2, 3]}), 503)
        gate.set()
        thread.join(60)
        assert first[0].status_code == 200, first[0].text


def test_health_answers_while_a_big_tokenize_runs(tiny_model_dir):
    limits = ServerLimits(max_prompt_chars=10**8, max_body_bytes=64 * 1024 * 1024)
    with serve(tiny_model_dir, limits=limits) as (url, _):
        content = "the water of the world is big . " * 100_000  # 3.2M characters: seconds of tokenizing
        body = {"messages": [{"role": "user", "content": content}]}
        done: list = []
        thread = threading.Thread(target=lambda: done.append(httpx.post(f"{url}/tokenize", json=body, timeout=300)))
        thread.start()
        time.sleep(0.3)  # the body is sent and being worked on
        slowest, checks = 0.0, 0
        while thread.is_alive() and checks < 20:
            start = time.monotonic()
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200
            slowest = max(slowest, time.monotonic() - start)
            checks += 1
            time.sleep(0.05)
        thread.join(300)
        assert done[0].status_code == 200 and done[0].json()["count"] > 700_000
        assert checks >= 3, "the tokenize finished too fast to measure anything"
        assert slowest < 0.5, f"/health took {slowest:.2f} s while a tokenize ran"


def test_upload_size_pdf_pages_and_extraction_time(limited, tiny_model_dir):
    url, _ = limited
    big = httpx.post(f"{url}/v1/documents", files={"file": ("a.txt", b"w " * 5000)})
    assert "--max-upload-bytes" in error_of(big, 413)["message"]
    error = error_of(httpx.post(f"{url}/v1/documents", files={"file": ("a.txt", b"w " * 600)}), 413)
    assert "--max-prompt-chars" in error["message"]
    three_pages = blank_pdf(3)
    error = error_of(httpx.post(f"{url}/v1/documents", files={"file": ("a.pdf", three_pages)}), 413)
    assert "has 3 pages, more than 2 (--max-pdf-pages)" in error["message"]
    with serve(tiny_model_dir, limits=ServerLimits(pdf_timeout=1e-9)) as (slow_url, _):
        error = error_of(httpx.post(f"{slow_url}/v1/documents", files={"file": ("a.pdf", blank_pdf(1))}), 413)
        assert "--pdf-timeout" in error["message"]


def blank_pdf(pages: int, **encrypt) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(72, 72)
    if encrypt:
        writer.encrypt(**encrypt)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# -- 5. localhost is not open to every web page ---------------------------------------------------------------------


def test_json_endpoints_require_a_json_content_type(server):
    url, _ = server
    body = json.dumps({"prompt": "the water", "max_tokens": 2})
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        r = httpx.post(f"{url}/v1/completions", content=body, headers=headers)
        assert error_of(r, 415)["code"] == "unsupported_media_type"
    for path in ("/v1/chat/completions", "/get_ppl", "/tokenize", "/detokenize"):
        assert httpx.post(f"{url}{path}", content="{}", headers={"content-type": "text/plain"}).status_code == 415
    ok = httpx.post(f"{url}/v1/completions", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_host_header_must_name_this_server(server, tiny_model_dir):
    url, _ = server
    port = url.rsplit(":", 1)[1]
    error = error_of(httpx.get(f"{url}/v1/models", headers={"host": "evil.example"}), 421)
    assert error["code"] == "invalid_host" and "--allowed-hosts" in error["message"]
    assert httpx.get(f"{url}/", headers={"host": f"attacker.example:{port}"}).status_code == 421
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{url}/v1/models", headers={"host": host}).status_code == 200, host
    with serve(tiny_model_dir, allowed_hosts=("my.box",)) as (other, _):
        assert httpx.get(f"{other}/v1/models", headers={"host": "my.box:80"}).status_code == 200
        assert httpx.get(f"{other}/v1/models", headers={"host": "other.box"}).status_code == 421


def test_no_cors_by_default_and_foreign_origins_are_refused(server, tiny_model_dir):
    url, _ = server
    preflight = {"origin": "http://localhost:3000", "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type"}  # fmt: skip
    r = httpx.options(f"{url}/v1/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    post = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                      headers={"origin": "https://evil.example"})  # fmt: skip
    assert error_of(post, 403)["code"] == "origin_not_allowed"
    same = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers={"origin": url})
    assert same.status_code == 200, same.text  # the chat page itself
    with serve(tiny_model_dir, allowed_origins=("http://localhost:3000",)) as (other, _):
        r = httpx.options(f"{other}/v1/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = httpx.post(f"{other}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                       headers={"origin": "http://localhost:3000"})  # fmt: skip
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert httpx.post(f"{other}/v1/completions", json={"prompt": "x"},
                          headers={"origin": "https://evil.example"}).status_code == 403  # fmt: skip


def test_api_key_is_compared_in_constant_time(tiny_model_dir, monkeypatch):
    seen = []
    real = guards.hmac.compare_digest
    monkeypatch.setattr(guards.hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    with serve(tiny_model_dir, api_key="s3cret") as (url, _):
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200
    assert seen == [(b"Bearer wrong", b"Bearer s3cret"), (b"Bearer s3cret", b"Bearer s3cret")]


# -- 6. hostile files and ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [[-1], [5, 2**40], [2**70]])
def test_detokenize_out_of_range_ids_is_a_400(server, tokens):
    url, _ = server
    error = error_of(httpx.post(f"{url}/detokenize", json={"tokens": tokens}), 400)
    assert error["param"] == "tokens" and "expected token ids in [0, 512)" in error["message"]


def test_hostile_pdfs_are_400s(server, monkeypatch):
    url, _ = server
    error = error_of(httpx.post(f"{url}/v1/documents", files={"file": ("locked.pdf", blank_pdf(1, user_password="pw"))}),
                     400)  # fmt: skip
    assert "encrypted PDF that needs a password" in error["message"]
    from pypdf import PageObject
    from pypdf.errors import LimitReachedError

    for exc, words in ((NotImplementedError("JBIG2 decoding"), "a PDF feature pypdf does not support: JBIG2"),
                       (LimitReachedError("too many objects"), "pypdf's safety limits: too many objects"),
                       (RecursionError("deep"), "RecursionError: deep")):  # fmt: skip

        def boom(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(PageObject, "extract_text", boom)
        error = error_of(httpx.post(f"{url}/v1/documents", files={"file": ("x.pdf", blank_pdf(1))}), 400)
        assert error["param"] == "file" and words in error["message"] and "'x.pdf'" in error["message"], error


# -- 7. /health tells the truth -------------------------------------------------------------------------------------


def test_a_failing_command_fails_its_request_and_the_thread_survives(tiny_model_dir, monkeypatch):
    with serve(tiny_model_dir) as (url, app):
        engine = app.state.engine.pipe.engine
        real_add = engine.add_request

        def broken_add(*args, **kwargs):
            raise RuntimeError("injected bug")

        monkeypatch.setattr(engine, "add_request", broken_add)
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "the water", "max_tokens": 2})
        assert r.status_code >= 500 and "injected bug" in r.json()["error"]["message"]
        monkeypatch.setattr(engine, "add_request", real_add)
        real_abort = engine.abort

        def broken_abort(seq):
            raise RuntimeError("abort bug")

        monkeypatch.setattr(engine, "abort", broken_abort)
        with httpx.stream(
            "POST",
            f"{url}/v1/completions",
            json={"prompt": "the water", "max_tokens": 200, "ignore_eos": True, "stream": True},
        ) as r:
            next(r.iter_lines())  # then disconnect: the abort command fails on the engine thread
        time.sleep(0.5)
        monkeypatch.setattr(engine, "abort", real_abort)
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "the water", "max_tokens": 2})
        assert r.status_code == 200, r.text


def test_health_is_503_when_the_engine_thread_died(tiny_model_dir, monkeypatch):
    with serve(tiny_model_dir) as (url, app):
        scheduler = app.state.engine.pipe.engine.scheduler

        def broken(*args):
            raise RuntimeError("scheduler bug")

        monkeypatch.setattr(scheduler, "has_unfinished", broken)
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "the water", "max_tokens": 2}, timeout=30)
        assert r.status_code == 503 and "scheduler bug" in r.json()["error"]["message"], r.text
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        assert "scheduler bug" in health.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "the water", "max_tokens": 2}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
