"""One request never fails another: a sequence whose sampling fails ends alone, naming its field; the others in
its batch get exactly the tokens they get alone. And the waiting queue is bounded."""

from __future__ import annotations

import copy
import math

import pytest
from engine_helpers import fp32_engine_config, make_tiny_model, random_prompt

from lmx import GenerationConfig, pipeline
from lmx.engine.scheduler import EngineBusyError

# Values GenerationConfig refuses, set after construction: what a caller bypassing validation could send.
POISONS = [("repetition_penalty", 1e-300), ("random_seed", 2**64), ("temperature", math.nan)]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    directory = tmp_path_factory.mktemp("isolation")
    make_tiny_model(directory, "llama", "default", seed=11)
    return pipeline(directory, engine_config=fp32_engine_config())


def four_requests():
    prompts = [random_prompt(8 + 5 * i, seed=40 + i) for i in range(4)]
    gens = [
        GenerationConfig(max_new_tokens=10, ignore_eos=True),  # plain greedy
        GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.9, top_k=40, random_seed=3, ignore_eos=True),
        GenerationConfig(max_new_tokens=10, do_sample=True, top_p=0.8, random_seed=5, ignore_eos=True,
                         repetition_penalty=1.1, logprobs=2),
        GenerationConfig(max_new_tokens=10, repetition_penalty=1.3, ignore_eos=True),
    ]  # fmt: skip
    return prompts, gens


@pytest.mark.parametrize("poisoned", [1, 2])
@pytest.mark.parametrize("field, value", POISONS, ids=[f for f, _ in POISONS])
def test_a_poisoned_sequence_fails_alone(pipe, poisoned, field, value):
    prompts, gens = four_requests()
    solo = [pipe(p, gen_config=g).token_ids for p, g in zip(prompts, gens)]
    bad = copy.copy(gens[poisoned])
    object.__setattr__(bad, field, value)
    gens[poisoned] = bad
    results = pipe(prompts, gen_config=gens)
    assert results[poisoned].finish_reason == "error"
    assert results[poisoned].error.startswith(f"{field}:"), results[poisoned].error
    for i, result in enumerate(results):
        if i != poisoned:
            assert result.finish_reason == "length" and result.error is None
            assert result.token_ids == solo[i], f"request {i} changed because request {poisoned} was poisoned"
    assert not pipe.engine.scheduler.has_unfinished()
    assert pipe.engine.block_manager.num_free_blocks == pipe.engine.block_manager.num_blocks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(random_seed=2**64),
            r"random_seed: expected an int from 0 to 18446744073709551615, got 18446744073709551616",
        ),
        (dict(random_seed=-1), r"random_seed: expected an int >= 0, got -1"),
        (dict(repetition_penalty=1e-300), r"repetition_penalty: expected a value in \[0.01, 100\]"),
        (dict(repetition_penalty=1e300), r"repetition_penalty: expected a value in \[0.01, 100\]"),
        (dict(temperature=math.inf), r"temperature: expected a finite number, got inf"),
        (dict(temperature=math.nan), r"temperature: expected a finite number, got nan"),
        (dict(temperature=1e9), r"temperature: expected a value in \[0, 100\]"),
        (dict(top_k=2**40), r"top_k: expected an int from 0 to 2147483647"),
        (dict(logprobs=10**6), r"logprobs: expected an int from 0 to 20"),
        (dict(max_new_tokens=2**64), r"max_new_tokens: expected an int from 1 to 2147483647"),
    ],
)
def test_generation_config_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)


def test_seed_range_ends_are_accepted(pipe):
    prompt = random_prompt(6, seed=1)
    for seed in (0, 2**64 - 1):
        gen = GenerationConfig(max_new_tokens=3, do_sample=True, random_seed=seed, ignore_eos=True)
        assert pipe(prompt, gen_config=gen).finish_reason == "length"


def test_waiting_queue_is_bounded(tmp_path):
    make_tiny_model(tmp_path, "llama", "default", seed=12)
    pipe = pipeline(tmp_path, engine_config=fp32_engine_config(max_queued_requests=2))
    engine, gen = pipe.engine, GenerationConfig(max_new_tokens=2, ignore_eos=True)
    first = [engine.add_request(random_prompt(5, seed=i), gen) for i in range(2)]
    with pytest.raises(EngineBusyError, match=r"2 requests are already waiting \(max_queued_requests=2\)"):
        engine.add_request(random_prompt(5, seed=3), gen)
    with pytest.raises(EngineBusyError, match="do not fit in the waiting queue"):
        pipe([random_prompt(5, seed=4)], gen_config=gen)  # a batch that does not fit queues none of itself
    assert len(engine.scheduler.waiting) == 2
    for _ in engine.run_until_done(first):
        pass
    assert [len(r.token_ids) for r in pipe([random_prompt(5, seed=i) for i in range(2)], gen_config=gen)] == [2, 2]
    with pytest.raises(ValueError, match="max_queued_requests: expected an int >= 1, got 0"):
        fp32_engine_config(max_queued_requests=0)
