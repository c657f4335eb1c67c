"""lmx against transformers on tiny random models (fp32, CPU): greedy tokens, perplexity, batching, chunking."""

from __future__ import annotations

import pytest
from engine_helpers import (
    ARCHITECTURES,
    MAX_POSITIONS,
    ROPE_PARAMETERS,
    fp32_engine_config,
    fresh_hf_model,
    hf_greedy,
    hf_mean_nll,
    make_tiny_model,
    random_prompt,
)  # fmt: skip

from lmx import GenerationConfig, pipeline

NEW_TOKENS = 32
GREEDY = GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """(arch, rope) -> directory of a saved tiny model; built once per module."""
    cache = {}

    def get(arch: str, rope: str):
        if (arch, rope) not in cache:
            directory = tmp_path_factory.mktemp(f"{arch}-{rope}")
            make_tiny_model(directory, arch, rope)
            cache[arch, rope] = directory
        return cache[arch, rope]

    return get


@pytest.mark.parametrize("rope", list(ROPE_PARAMETERS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_matches_transformers(tiny_models, arch, rope):
    directory = tiny_models(arch, rope)
    prompt = random_prompt(40, seed=1)  # 40 + 32 > MAX_POSITIONS: decoding crosses max_position_embeddings
    assert len(prompt) + NEW_TOKENS > MAX_POSITIONS
    expected = hf_greedy(fresh_hf_model(directory), prompt, NEW_TOKENS)
    pipe = pipeline(directory, engine_config=fp32_engine_config())
    assert pipe(prompt, gen_config=GREEDY).token_ids == expected


@pytest.mark.parametrize("rope", ["default", "dynamic"])
def test_greedy_long_prompt_past_max_positions(tiny_models, rope):
    """A prompt already longer than max_position_embeddings: dynamic NTK rotates it with base'(L), in chunks."""
    directory = tiny_models("llama", rope)
    prompt = random_prompt(100, seed=2)
    expected = hf_greedy(fresh_hf_model(directory), prompt, NEW_TOKENS)
    for chunk in (7, 32, 4096):
        pipe = pipeline(directory, engine_config=fp32_engine_config(max_prefill_token_num=chunk))
        assert pipe(prompt, gen_config=GREEDY).token_ids == expected, f"max_prefill_token_num={chunk}"


@pytest.mark.parametrize("rope", list(ROPE_PARAMETERS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ppl_matches_transformers(tiny_models, arch, rope):
    directory = tiny_models(arch, rope)
    ids = random_prompt(160, seed=3)  # 10x the prefill chunk, and past max_position_embeddings
    expected = hf_mean_nll(fresh_hf_model(directory), ids)
    pipe = pipeline(directory, engine_config=fp32_engine_config(max_prefill_token_num=16))
    (got,) = pipe.get_ppl(ids)
    assert got == pytest.approx(expected, rel=1e-5)


def test_ppl_batch_of_inputs(tiny_models):
    directory = tiny_models("llama", "dynamic")
    inputs = [random_prompt(n, seed=n) for n in (20, 90, 2, 150)]
    hf = fresh_hf_model(directory)
    expected = []
    for ids in inputs:
        expected.append(hf_mean_nll(hf, ids))
        hf = fresh_hf_model(directory)  # reset transformers' cached dynamic base
    pipe = pipeline(directory, engine_config=fp32_engine_config(max_prefill_token_num=32))
    assert pipe.get_ppl(inputs) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("rope", ["default", "dynamic"])
def test_same_tokens_alone_in_batch_and_chunked(tiny_models, rope):
    directory = tiny_models("llama", rope)
    lengths = [40, 3, 75, 17, 1, 58, 33, 90]
    prompts = [random_prompt(n, seed=10 + i) for i, n in enumerate(lengths)]
    alone = pipeline(directory, engine_config=fp32_engine_config())
    expected = [alone(p, gen_config=GREEDY).token_ids for p in prompts]
    assert expected[0] == hf_greedy(fresh_hf_model(directory), prompts[0], NEW_TOKENS)
    for chunk in (5, 16, 64, 8192):
        pipe = pipeline(directory, engine_config=fp32_engine_config(max_prefill_token_num=chunk))
        got = [r.token_ids for r in pipe(prompts, gen_config=GREEDY)]
        assert got == expected, f"max_prefill_token_num={chunk}"


def test_preemption_keeps_answers(tiny_models):
    """A cache too small for the whole batch: sequences are preempted and recomputed, answers do not change."""
    directory = tiny_models("llama", "dynamic")
    prompts = [random_prompt(n, seed=20 + n) for n in (50, 45, 60, 30)]
    alone = pipeline(directory, engine_config=fp32_engine_config())
    expected = [alone(p, gen_config=GREEDY).token_ids for p in prompts]
    small = pipeline(directory, engine_config=fp32_engine_config(block_size=4, num_blocks=40, max_prefill_token_num=32))
    seqs = small.engine.generate(prompts, [GREEDY] * len(prompts))
    assert [s.output_ids for s in seqs] == expected
    assert sum(s.num_preemptions for s in seqs) > 0  # the cache was too small, so the test exercised preemption
    assert small.engine.block_manager.num_free_blocks == 40


def test_sharded_safetensors_and_legacy_rope_scaling(tmp_path):
    """The same model from shards with an index, and with config.json in the legacy rope_scaling spelling."""
    from engine_helpers import rewrite_config

    model = make_tiny_model(tmp_path / "one", "llama", "dynamic")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    rewrite_config(
        tmp_path / "sharded",
        rope_parameters=None, rope_theta=10000.0, rope_scaling={"type": "dynamic", "factor": 2.0},
    )  # fmt: skip
    prompt = random_prompt(40, seed=5)
    expected = hf_greedy(fresh_hf_model(tmp_path / "one"), prompt, NEW_TOKENS)
    pipe = pipeline(tmp_path / "sharded", engine_config=fp32_engine_config())
    assert pipe.engine.model_config.rope.scaling_type == "dynamic"
    assert pipe(prompt, gen_config=GREEDY).token_ids == expected


def test_rope_scaling_factor_turns_on_dynamic(tiny_models):
    """LMDeploy's rope_scaling_factor on a default-RoPE model equals the model saved with dynamic factor 2."""
    default_dir, dynamic_dir = tiny_models("llama", "default"), tiny_models("llama", "dynamic")
    prompt = random_prompt(100, seed=6)
    a = pipeline(default_dir, engine_config=fp32_engine_config(rope_scaling_factor=2.0))
    b = pipeline(dynamic_dir, engine_config=fp32_engine_config())
    assert a(prompt, gen_config=GREEDY).token_ids == b(prompt, gen_config=GREEDY).token_ids
    # The default session_len follows the scaled context, as LMDeploy's.
    c = pipeline(default_dir, engine_config=fp32_engine_config(rope_scaling_factor=2.0, session_len=None))
    assert c.session_len == 2 * MAX_POSITIONS


def test_prompt_logprobs_match_transformers(tiny_models):
    """Perplexity requests with prompt_logprobs=k keep each token's logprob and the top k (server `echo`)."""
    import torch

    directory = tiny_models("llama", "dynamic")
    ids = random_prompt(70, seed=5)  # several 16-token chunks, past max_position_embeddings
    hf = fresh_hf_model(directory)
    with torch.no_grad():
        expected = torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    engine = pipeline(directory, engine_config=fp32_engine_config(max_prefill_token_num=16)).engine
    seq = engine.add_perplexity_request(ids, prompt_logprobs=3)
    list(engine.run_until_done([seq]))
    assert len(seq.prompt_token_logprobs) == len(ids) - 1
    for p, (logprob, top) in enumerate(seq.prompt_token_logprobs):
        assert logprob == pytest.approx(float(expected[p, ids[p + 1]]), abs=1e-4)
        values, tokens = expected[p].topk(3)
        assert list(top) == tokens.tolist()
        assert list(top.values()) == pytest.approx(values.tolist(), abs=1e-4)
    assert -sum(lp for lp, _ in seq.prompt_token_logprobs) / (len(ids) - 1) == pytest.approx(
        seq.nll_sum / seq.nll_count, rel=1e-6
    )
    with pytest.raises(ValueError, match=r"prompt_logprobs: expected None or an int >= 0, got -1"):
        engine.add_perplexity_request(ids, prompt_logprobs=-1)
