"""`lmx serve --kv-cache-dtype int8`: the option reaches the engine and /health reports the cache."""

from __future__ import annotations

import httpx
from conftest import MODEL_NAME, engine_config
from server_helpers import running_server


def test_health_reports_the_quantized_cache(tiny_model_dir):
    from lmx import pipeline
    from lmx.server.app import create_app

    app = create_app(
        pipeline(tiny_model_dir, engine_config=engine_config(kv_cache_dtype="int8")), model_name=MODEL_NAME
    )
    with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "the man said", "max_tokens": 4})
        assert r.status_code == 200, r.text
        cache = client.get("/health").json()["kv_cache"]
    assert cache["kv_cache_dtype"] == "int8"
    assert cache["num_blocks"] == 256 and cache["block_size"] == 16 and cache["capacity_tokens"] == 4096
    assert cache["kv_cache_bytes"] > 0


def test_serve_parser_takes_the_option():
    from lmx.cli import build_parser, engine_config_from_args

    args = build_parser().parse_args(["serve", "m", "--kv-cache-dtype", "fp8"])
    assert engine_config_from_args(args).kv_cache_dtype == "fp8"
