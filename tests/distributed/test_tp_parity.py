"""tp=2 (Gloo, 2 processes) against tp=1: the same greedy tokens, the same perplexity up to fp32 reduction order."""

from __future__ import annotations

import logging

import pytest
from engine_helpers import MAX_POSITIONS, fp32_engine_config, random_prompt

from lmx import EngineConfig, GenerationConfig, pipeline

NEW_TOKENS = 32
GREEDY = GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True)
PPL_RTOL = 1e-5  # fp32: the partial sums of o_proj and down add in another order


def run(directory, **overrides):
    """Greedy tokens of a batch (one prompt crossing max_position_embeddings) and perplexities of two inputs."""
    prompts = [random_prompt(40, seed=1), random_prompt(9, seed=2), random_prompt(100, seed=3)]
    assert len(prompts[0]) + NEW_TOKENS > MAX_POSITIONS and len(prompts[2]) > MAX_POSITIONS
    with pipeline(directory, engine_config=fp32_engine_config(num_threads=1, **overrides)) as pipe:
        tokens = [r.token_ids for r in pipe(prompts, gen_config=GREEDY)]
        ppl = pipe.get_ppl([random_prompt(120, seed=4), random_prompt(30, seed=5)])
        kv_bytes = pipe.engine.kv_cache_bytes_per_rank
    return tokens, ppl, kv_bytes


@pytest.mark.parametrize("name", ["llama-default", "qwen2-default", "internlm2", "llama-dynamic", "llama-tied"])
def test_tp2_matches_tp1(tp_models, name):
    directory = tp_models(name)
    # A small prefill chunk: prompts are prefilled in several steps, batched with other sequences' decodes.
    tokens1, ppl1, kv1 = run(directory, max_prefill_token_num=32)
    tokens2, ppl2, kv2 = run(directory, max_prefill_token_num=32, tp=2)
    assert tokens2 == tokens1
    assert ppl2 == pytest.approx(ppl1, rel=PPL_RTOL)
    assert len(kv2) == 2 and kv2[0] == kv2[1] == kv1[0] // 2  # each rank caches its half of the KV heads


def test_dynamic_ntk_factor_across_trained_length(tp_models):
    """rope_scaling_factor (LMDeploy's dynamic NTK switch) on a plain-RoPE model, past the trained length."""
    directory = tp_models("llama-default")
    tokens1, ppl1, _ = run(directory, rope_scaling_factor=2.0, session_len=256)
    tokens2, ppl2, _ = run(directory, rope_scaling_factor=2.0, session_len=256, tp=2)
    assert tokens2 == tokens1
    assert ppl2 == pytest.approx(ppl1, rel=PPL_RTOL)


def test_kv_heads_replicated_when_ranks_exceed_them(tp_models, caplog):
    directory = tp_models("llama-mqa")
    tokens1, ppl1, kv1 = run(directory)
    with caplog.at_level(logging.INFO, logger="lmx.tp"):
        tokens2, ppl2, kv2 = run(directory, tp=2)
    assert "2 ranks > 1 KV heads: each KV head is replicated on 2 ranks" in caplog.text
    assert tokens2 == tokens1
    assert ppl2 == pytest.approx(ppl1, rel=PPL_RTOL)
    assert kv2 == [kv1[0], kv1[0]]  # the one KV head on both ranks


def test_prefix_cache_and_sampling_with_tp(tp_models):
    """A reused prefix (the workers' cache holds the same blocks) and seeded sampling (rank 0 only)."""
    directory = tp_models("qwen2-default")
    doc = random_prompt(48, seed=7)
    gens = [GenerationConfig(max_new_tokens=8, ignore_eos=True, do_sample=True, temperature=0.8, random_seed=11)]
    outs = {}
    for tp in (1, 2):
        with pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=tp)) as pipe:
            first = pipe(doc + [5, 6], gen_config=GREEDY).token_ids
            second = pipe(doc + [7, 8, 9], gen_config=GREEDY).token_ids  # reuses the blocks of doc
            assert pipe.metrics()["cached_tokens"] >= 48  # doc's 3 blocks of 16 came from the cache
            sampled = pipe(doc, gen_config=gens[0]).token_ids
            outs[tp] = (first, second, sampled)
    assert outs[2] == outs[1]


def test_bad_tp_values(tp_models):
    with pytest.raises(ValueError, match=r"tp: expected an int >= 1, got 0"):
        EngineConfig(tp=0)
    with pytest.raises(TypeError, match=r"tp: expected an int, got str"):
        EngineConfig(tp="2")
    directory = tp_models("llama-default")  # 4 query heads, 2 KV heads, intermediate 384
    with pytest.raises(ValueError, match=r"tp: expected a divisor of the model's num_attention_heads \(4\), got 3"):
        pipeline(directory, engine_config=fp32_engine_config(tp=3))


def test_more_ranks_than_cpus(tp_models, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    directory = tp_models("llama-default")
    with pytest.raises(ValueError, match=r"tp: expected at most 2 ranks on this machine's 2 CPUs .*got 4"):
        pipeline(directory, engine_config=fp32_engine_config(tp=4))


def test_engine_replaced_by_a_newer_one(tp_models):
    directory = tp_models("llama-default")
    first = pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2))
    second = pipeline(directory, engine_config=fp32_engine_config(num_threads=1, tp=2))
    with pytest.raises(RuntimeError, match="one at a time"):
        first([1, 2, 3], gen_config=GREEDY)
    assert len(second([1, 2, 3], gen_config=GREEDY).token_ids) == NEW_TOKENS
    second.close()
    with pytest.raises(RuntimeError, match="this tensor-parallel engine was closed"):
        second([1, 2, 3], gen_config=GREEDY)


def test_every_front_end_takes_tp(capsys):
    from lmx.cli import build_parser, engine_config_from_args

    parser = build_parser()
    for command in (["serve"], ["passkey"], ["niah"], ["ppl"], ["repeat", "--docs", "x"], ["longbench", "--data", "x"],
                    ["generate"], ["chat"]):  # fmt: skip
        assert engine_config_from_args(parser.parse_args([*command, "--tp", "2"])).tp == 2, command
    assert parser.parse_args(["demo", "--tp", "2"]).tp == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--tp", "0"])
    assert "argument --tp: expected a positive integer, got '0'" in capsys.readouterr().err


def test_tp_must_match_the_torchrun_world(tp_models, monkeypatch):
    for key, value in dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(key, value)
    directory = tp_models("llama-default")
    with pytest.raises(ValueError, match=r"tp: expected the torchrun job's WORLD_SIZE \(2\) ranks, got tp=4"):
        pipeline(directory, engine_config=fp32_engine_config(tp=4))
