"""Sampling: seeds, processors against transformers', logprobs, stop conditions."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import fp32_engine_config, make_tiny_model, random_prompt

from lmx import GenerationConfig, pipeline
from lmx.engine.sampler import apply_repetition_penalty, filtered_probs


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sampling")
    make_tiny_model(directory, "llama", "default", seed=4)
    return pipeline(directory, engine_config=fp32_engine_config())


def test_seed_reproducible_alone_and_in_batch(pipe):
    gen = GenerationConfig(
        max_new_tokens=16, do_sample=True, temperature=1.5, top_k=50, top_p=0.9, random_seed=1234, ignore_eos=True
    )
    prompt = random_prompt(20, seed=1)
    first = pipe(prompt, gen_config=gen).token_ids
    assert pipe(prompt, gen_config=gen).token_ids == first
    batch = pipe([random_prompt(30, seed=2), prompt, random_prompt(5, seed=3)], gen_config=gen)
    assert batch[1].token_ids == first
    other_seed = GenerationConfig(**{**gen.__dict__, "random_seed": 99})
    assert pipe(prompt, gen_config=other_seed).token_ids != first


def test_top_k_one_and_zero_temperature_are_greedy(pipe):
    prompt = random_prompt(20, seed=5)
    greedy = pipe(prompt, gen_config=GenerationConfig(max_new_tokens=12, ignore_eos=True)).token_ids
    for gen in (
        GenerationConfig(max_new_tokens=12, do_sample=True, top_k=1, ignore_eos=True),
        GenerationConfig(max_new_tokens=12, do_sample=True, temperature=0.0, ignore_eos=True),
    ):
        assert pipe(prompt, gen_config=gen).token_ids == greedy


def test_processors_match_transformers():
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )  # fmt: skip

    torch.manual_seed(0)
    logits = torch.randn(1, 300) * 3
    history = [3, 17, 17, 250, 299]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]), logits.clone())
    assert torch.equal(apply_repetition_penalty(logits[0], history, 1.3), expected[0])

    gen = GenerationConfig(temperature=0.7, top_k=40, top_p=0.8, do_sample=True)
    warped = logits.clone()
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.8)):
        warped = warper(None, warped)
    torch.testing.assert_close(filtered_probs(logits[0], gen), torch.softmax(warped, dim=-1)[0])


def test_repetition_penalty_changes_greedy_output(pipe):
    prompt = random_prompt(20, seed=6)
    plain = pipe(prompt, gen_config=GenerationConfig(max_new_tokens=24, ignore_eos=True)).token_ids
    penalised = pipe(
        prompt, gen_config=GenerationConfig(max_new_tokens=24, ignore_eos=True, repetition_penalty=5.0)
    ).token_ids
    assert penalised != plain
    assert len(set(penalised)) >= len(set(plain))


def test_logprobs(pipe):
    prompt = random_prompt(20, seed=7)
    r = pipe(prompt, gen_config=GenerationConfig(max_new_tokens=6, logprobs=3, ignore_eos=True))
    assert len(r.logprobs) == 6
    for token, (lp, top) in zip(r.token_ids, r.logprobs):
        assert len(top) == 3 and lp <= 0
        assert max(top, key=top.get) == token  # greedy picks the most likely token
        assert lp == pytest.approx(max(top.values()))


def test_stop_token_ids_and_ignore_eos(pipe):
    prompt = random_prompt(20, seed=8)
    free = pipe(prompt, gen_config=GenerationConfig(max_new_tokens=16, ignore_eos=True))
    stop_at = free.token_ids[5]
    first = free.token_ids.index(stop_at)
    stopped = pipe(prompt, gen_config=GenerationConfig(max_new_tokens=16, stop_token_ids=[stop_at]))
    assert stopped.token_ids == free.token_ids[: first + 1] and stopped.finish_reason == "stop"
    # The model's EOS ends generation unless ignore_eos.
    pipe.engine.eos_token_ids = [stop_at]
    try:
        assert pipe(prompt, gen_config=GenerationConfig(max_new_tokens=16)).finish_reason == "stop"
        r = pipe(prompt, gen_config=GenerationConfig(max_new_tokens=16, ignore_eos=True))
        assert r.token_ids == free.token_ids and r.finish_reason == "length"
    finally:
        pipe.engine.eos_token_ids = []


def test_streaming_deltas_add_up(pipe):
    prompts = [random_prompt(10, seed=9), random_prompt(25, seed=10)]
    gen = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    full = pipe(prompts, gen_config=gen)
    pieces = {0: [], 1: []}
    for r in pipe.stream_infer(prompts, gen_config=gen):
        pieces[r.index].extend(r.token_ids)
    assert [pieces[0], pieces[1]] == [full[0].token_ids, full[1].token_ids]


def test_session_len_caps_generation(tmp_path):
    make_tiny_model(tmp_path, "llama", "default", seed=4)
    pipe = pipeline(tmp_path, engine_config=fp32_engine_config(session_len=24))
    r = pipe(random_prompt(20, seed=11), gen_config=GenerationConfig(max_new_tokens=100, ignore_eos=True))
    assert r.generate_token_len == 4 and r.finish_reason == "length"
