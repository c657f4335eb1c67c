"""EngineConfig(kv_cache_dtype=...) on a tiny random model: the cache is int8 / fp8, holds more blocks for the same
memory, reports itself, gives nearly the fp32 cache's answers, and prefix caching still changes nothing."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import fp32_engine_config, make_tiny_model, random_prompt

from lmx import EngineConfig, GenerationConfig, pipeline
from lmx.engine.model_runner import ModelRunner

GREEDY = GenerationConfig(max_new_tokens=12, ignore_eos=True, logprobs=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kvq-dynamic")
    make_tiny_model(d, "llama", "dynamic", seed=5)
    return d


def _engine(model_dir, **overrides):
    return pipeline(model_dir, engine_config=fp32_engine_config(**overrides)).engine


def test_config_rejects_unknown_dtype():
    with pytest.raises(ValueError, match=r"kv_cache_dtype: expected one of \('auto', 'int8', 'fp8'\), got 'int4'"):
        EngineConfig(kv_cache_dtype="int4")


@pytest.mark.parametrize("kv", ["int8", "fp8"])
def test_cache_tensors_and_stats(model_dir, kv):
    engine = _engine(model_dir, kv_cache_dtype=kv)
    runner = engine.runner
    want = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[kv]
    assert runner.kv_cache.dtype == want
    cache = runner.kv_caches[0]
    assert cache.k_scales is not None and cache.v_scales is not None
    stats = engine.kv_cache_stats()
    assert stats["kv_cache_dtype"] == str(want).removeprefix("torch.")
    assert stats["num_blocks"] == 64 and stats["capacity_tokens"] == 64 * 16
    assert stats["kv_cache_bytes"] == runner.kv_cache_bytes
    auto = _engine(model_dir).kv_cache_stats()
    assert auto["kv_cache_dtype"] == "float32"


def test_bytes_per_block_and_blocks_by_memory(model_dir, monkeypatch):
    cfg = _engine(model_dir).model_config
    fp32 = ModelRunner.cache_bytes_per_block(cfg, 16, torch.float32)
    bf16 = ModelRunner.cache_bytes_per_block(cfg, 16, torch.bfloat16)
    int8 = ModelRunner.cache_bytes_per_block(cfg, 16, torch.float32, "int8")
    fp8 = ModelRunner.cache_bytes_per_block(cfg, 16, torch.bfloat16, "fp8")
    rows = cfg.num_layers * 2 * 16 * cfg.num_kv_heads
    assert (fp32, bf16, fp8) == (rows * cfg.head_dim * 4, rows * cfg.head_dim * 2, rows * cfg.head_dim)
    assert int8 == rows * (cfg.head_dim + 8)  # the (scale, zero) pair of fp32 per row
    # Sized by memory (cache_max_entry_count of what is free): the quantized cache gets more blocks.
    import lmx.engine.llm_engine as llm_engine

    monkeypatch.setattr(llm_engine, "_available_host_memory", lambda: 64 * fp32)
    counts = {}
    for kv in ("auto", "int8", "fp8"):
        config = fp32_engine_config(num_blocks=None, cache_max_entry_count=1.0, max_batch_size=1000, kv_cache_dtype=kv)
        counts[kv] = pipeline(model_dir, engine_config=config).engine.block_manager.num_blocks
    assert counts["auto"] == 64
    assert counts["int8"] == 64 * fp32 // int8 and counts["fp8"] == 256


@pytest.mark.parametrize("kv", ["int8", "fp8"])
def test_answers_close_to_the_fp32_cache(model_dir, kv):
    """Prompts crossing the trained context (dynamic NTK), batched: up to where the greedy tokens first differ
    (a random tiny model has near ties) the logprobs of the chosen tokens stay near the fp32 cache's."""
    prompts = [random_prompt(n, seed=n) for n in (9, 40, 70)]
    ref = _engine(model_dir).generate(prompts, [GREEDY] * 3)
    got = _engine(model_dir, kv_cache_dtype=kv).generate(prompts, [GREEDY] * 3)
    # This random model's attention is sharp (large weights): int8 moves a logprob by up to ~0.15 here; the
    # accuracy that matters is measured on SmolLM2 (bench/kv_quant_accuracy.py).
    tol = 0.3 if kv == "int8" else 1.5
    for a, b in zip(got, ref):
        same = 0
        while same < len(b.output_ids) and a.output_ids[same] == b.output_ids[same]:
            same += 1
        assert same >= (4 if kv == "int8" else 1), (a.output_ids, b.output_ids)
        la = torch.tensor([lp for lp, _ in a.logprobs[:same]])
        lb = torch.tensor([lp for lp, _ in b.logprobs[:same]])
        assert (la - lb).abs().max() < tol


def test_perplexity_close_to_the_fp32_cache(model_dir):
    ids = random_prompt(300, seed=3)
    ref = pipeline(model_dir, engine_config=fp32_engine_config()).get_ppl([ids])[0]
    got = pipeline(model_dir, engine_config=fp32_engine_config(kv_cache_dtype="int8")).get_ppl([ids])[0]
    assert abs(got - ref) / ref < 0.01


@pytest.mark.parametrize("kv", ["int8", "fp8"])
def test_prefix_caching_changes_nothing(model_dir, kv):
    """Same engine with prefix caching on and off: the second request reuses the first one's quantized blocks
    (and their scales) and gets exactly what the uncached engine computes."""
    prefix = random_prompt(50, seed=11)
    prompts = [prefix + random_prompt(7, seed=12), prefix + random_prompt(9, seed=13)]
    on = _engine(model_dir, kv_cache_dtype=kv, enable_prefix_caching=True)
    off = _engine(model_dir, kv_cache_dtype=kv, enable_prefix_caching=False)
    got = [on.generate([p], [GREEDY])[0] for p in prompts]
    expected = [off.generate([p], [GREEDY])[0] for p in prompts]
    assert on.scheduler.stats().get("hit_blocks", on.block_manager.num_blocks) != 0
    for a, b in zip(got, expected):
        assert a.output_ids == b.output_ids
        for (la, _), (lb, _) in zip(a.logprobs, b.logprobs):
            assert abs(la - lb) < 1e-4


def test_every_command_has_the_option():
    from lmx.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in ("serve", "demo", "passkey", "niah", "ppl", "generate"):
        assert name in commands, name
    for name, sub in commands.items():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert "--kv-cache-dtype" in flags, name
    args = parser.parse_args(["passkey", "--kv-cache-dtype", "int8"])
    from lmx.cli import engine_config_from_args

    assert engine_config_from_args(args).kv_cache_dtype == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args(["ppl", "--kv-cache-dtype", "int4"])


def test_tensor_parallel_int8_cache(model_dir):
    """tp=2: each rank holds its KV heads' int8 rows and scales (half the bytes); the tokens are tp=1's."""
    prompt = random_prompt(30, seed=1)
    gen = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    one = _engine(model_dir, kv_cache_dtype="int8")
    expected = one.generate([prompt], [gen])[0].output_ids
    two = _engine(model_dir, kv_cache_dtype="int8", tp=2)
    try:
        assert two.generate([prompt], [gen])[0].output_ids == expected
        assert two.kv_cache_bytes_per_rank == [one.runner.kv_cache_bytes // 2] * 2
    finally:
        two.close()
