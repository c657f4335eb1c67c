"""Prefix caching on tiny random models: reuse happens (hit counts), and it changes nothing (the same tokens,
logprobs and perplexity as the same engine with caching off), also under eviction, preemption, cancellation and
dynamic NTK on both sides of the trained context."""

from __future__ import annotations

import pytest
from engine_helpers import MAX_POSITIONS, fp32_engine_config, make_tiny_model, random_prompt

from lmx import EngineConfig, GenerationConfig, pipeline
from lmx.engine.sequence import Sequence

BLOCK_SIZES = [1, 16]
GREEDY = GenerationConfig(max_new_tokens=12, ignore_eos=True, logprobs=3)
LOGPROB_ATOL = 1e-4  # fp32: a prefix computed in another chunking differs in the last bits only


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for rope in ("default", "dynamic"):
        dirs[rope] = tmp_path_factory.mktemp(f"prefix-{rope}")
        make_tiny_model(dirs[rope], "llama", rope, seed=5)
    return dirs


def engines(directory, **overrides):
    """The same engine with prefix caching on and off (1024 cache slots unless told)."""
    overrides.setdefault("num_blocks", 1024 // overrides.get("block_size", 16))
    on = pipeline(directory, engine_config=fp32_engine_config(enable_prefix_caching=True, **overrides)).engine
    off = pipeline(directory, engine_config=fp32_engine_config(enable_prefix_caching=False, **overrides)).engine
    return on, off


def run(engine, prompts, gen=GREEDY):
    """Generate for ``prompts`` (one batch); returns the finished sequences."""
    return engine.generate([list(p) for p in prompts], [gen] * len(prompts))


def assert_same_results(got, expected):
    for g, e in zip(got, expected, strict=True):
        assert g.output_ids == e.output_ids
        assert g.finish_reason == e.finish_reason
        for (lp_g, top_g), (lp_e, top_e) in zip(g.logprobs, e.logprobs, strict=True):
            assert lp_g == pytest.approx(lp_e, abs=LOGPROB_ATOL)
            assert top_g.keys() == top_e.keys()
            assert [top_g[k] for k in top_e] == pytest.approx(list(top_e.values()), abs=LOGPROB_ATOL)


def hit_tokens(engine) -> int:
    return engine.block_manager.stats()["cached_tokens"]


def assert_all_blocks_free(engine):
    assert not engine.scheduler.has_unfinished()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_on_by_default_and_validated():
    assert EngineConfig().enable_prefix_caching is True
    with pytest.raises(TypeError, match="enable_prefix_caching: expected a bool, got str 'no'"):
        EngineConfig(enable_prefix_caching="no")


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_hit_and_partial_hit(model_dirs, block_size):
    on, off = engines(model_dirs["default"], block_size=block_size)
    doc = random_prompt(40, seed=1)
    same, mid_block = doc, doc + random_prompt(9, seed=2)  # 40 shared tokens: mid-block for block size 16
    other = doc[:20] + random_prompt(20, seed=3)
    for engine in (on, off):
        run(engine, [doc])
    for prompt, expected_hit in [(same, 39 // block_size * block_size), (mid_block, 40 // block_size * block_size),
                                 (other, 20 // block_size * block_size)]:  # fmt: skip
        before = hit_tokens(on)
        got = run(on, [prompt])
        assert hit_tokens(on) - before == expected_hit == got[0].num_cached_tokens
        assert_same_results(got, run(off, [prompt]))
    assert hit_tokens(off) == 0
    stats = on.scheduler.stats()
    assert stats["hit_rate"] == pytest.approx(stats["cached_tokens"] / stats["prompt_tokens"])
    assert stats["cached_blocks"] > 0
    assert_all_blocks_free(on)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_batch_sharing_a_cached_document(model_dirs, block_size):
    """A batch of questions about one document, cached by a first request, with greedy and seeded sampling."""
    on, off = engines(model_dirs["default"], block_size=block_size)
    doc = random_prompt(48, seed=4)
    sampled = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=20, random_seed=7,
                               ignore_eos=True, logprobs=2)  # fmt: skip
    for round_, gen in enumerate((GREEDY, sampled)):
        questions = [doc + random_prompt(3 + i, seed=10 * round_ + i) for i in range(4)]  # new ones each round
        for engine in (on, off):
            run(engine, [doc], gen)
        before = hit_tokens(on)
        assert_same_results(run(on, questions, gen), run(off, questions, gen))
        assert hit_tokens(on) - before == 4 * (48 // block_size * block_size)
    assert_all_blocks_free(on)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_perplexity_and_prompt_logprobs_unchanged(model_dirs, block_size):
    on, off = engines(model_dirs["default"], block_size=block_size)
    doc = random_prompt(64, seed=5)
    inputs = [doc, doc + random_prompt(16, seed=6), doc[:33]]
    run(on, [doc])  # the document is cached before any scoring
    run(off, [doc])
    assert on.get_ppl(inputs) == off.get_ppl(inputs)  # perplexity requests never read the cache
    seq_on = on.add_perplexity_request(inputs[1], prompt_logprobs=2)
    seq_off = off.add_perplexity_request(inputs[1], prompt_logprobs=2)
    for engine, seq in ((on, seq_on), (off, seq_off)):
        for _ in engine.run_until_done([seq]):
            pass
    assert seq_on.nll_sum == seq_off.nll_sum and seq_on.prompt_token_logprobs == seq_off.prompt_token_logprobs
    # ...but they populate it: a question about a document scored first reuses its blocks.
    before = hit_tokens(on)
    fresh = random_prompt(50, seed=7)
    on.get_ppl([fresh])
    off.get_ppl([fresh])
    question = fresh + random_prompt(5, seed=8)
    assert_same_results(run(on, [question]), run(off, [question]))
    assert hit_tokens(on) - before == 50 // block_size * block_size


def test_eviction_under_pressure(model_dirs):
    # 10 blocks of 16 = 160 tokens: each 60-token request (4 blocks) evicts what the one before it cached.
    on, off = engines(model_dirs["default"], num_blocks=10, session_len=160)
    prompts = [random_prompt(48, seed=20 + i) for i in range(5)]
    hits = []
    for prompt in prompts + prompts[:2] + prompts[-1:]:
        before = hit_tokens(on)
        assert_same_results(run(on, [prompt]), run(off, [prompt]))
        hits.append(hit_tokens(on) - before)
    # Each request leaves 3 named blocks and 1 empty one; from the fourth on, each evicts the 3 of the least
    # recently freed request: prompts 0 and 1 come back evicted and are recomputed. Prompt 4 is still cached: 2
    # blocks hit, and its third, recomputed for the last token's logits, takes over the cached copy's name (the
    # copy is reused first, so nothing is evicted).
    assert hits == [0] * 7 + [32]
    stats = on.block_manager.stats()
    assert stats["evictions"] == 4 * 3 and stats["cached_blocks"] == 9
    for i, cached in enumerate([True, True, False, False, True]):
        assert bool(on.block_manager.cached_prefix(Sequence(prompts[i] + [1], max_len=60))) == cached, i
    assert_all_blocks_free(on)


def test_preemption_of_sequences_sharing_blocks(model_dirs):
    # 12 blocks of 16: the 32-token shared prefix (2 blocks) plus 4 sequences growing to 80 tokens (3 more blocks
    # each) do not fit, so sequences are preempted while others hold the blocks they share.
    on, off = engines(model_dirs["default"], num_blocks=12, session_len=192)
    prefix = random_prompt(33, seed=30)
    gen = GenerationConfig(max_new_tokens=40, ignore_eos=True, logprobs=1)
    prompts = [prefix + random_prompt(6 + i, seed=31 + i) for i in range(4)]
    run(on, [prefix], gen)
    solo = [run(off, [p], gen)[0] for p in prompts]
    got = run(on, prompts, gen)
    assert on.scheduler.stats()["preemptions"] > 0
    assert_same_results(got, solo)
    assert_all_blocks_free(on)


def test_cancellation_of_a_sequence_sharing_blocks(model_dirs):
    on, off = engines(model_dirs["default"])
    prefix = random_prompt(40, seed=40)
    run(on, [prefix])
    a, b = (on.add_request(prefix + random_prompt(4, seed=41 + i), GREEDY) for i in range(2))
    for _ in range(3):
        on.step()
    shared = on.block_manager.block_table(a.seq_id)[:2]
    assert shared == on.block_manager.block_table(b.seq_id)[:2] and a.num_cached_tokens == 32
    on.abort(a)
    assert a.finish_reason == "abort" and not b.is_finished
    assert on.block_manager.block_table(b.seq_id)[:2] == shared  # still b's; nobody else may take them
    for _ in on.run_until_done([b]):
        pass
    assert_same_results([b], run(off, [b.token_ids[: b.num_prompt_tokens]]))
    assert_all_blocks_free(on)


def dynamic_cases():
    """(first prompts, follow-up prompt, hit tokens expected) on a model with max_position_embeddings 64."""
    long_doc = random_prompt(80, seed=50)  # > 64: rotated with base'(80)
    short_doc = random_prompt(40, seed=51)
    return {
        "below": ([short_doc], short_doc + random_prompt(10, seed=52), 32),
        "above, same length": ([long_doc], long_doc[:70] + random_prompt(10, seed=53), 64),
        "above, longer": ([long_doc], long_doc + random_prompt(8, seed=54), 0),  # base'(88): no reuse
        "above after below": ([short_doc], short_doc + random_prompt(30, seed=55), 0),
        "below after above": ([long_doc], long_doc[:50], 0),
    }


@pytest.mark.parametrize("case", list(dynamic_cases()))
def test_dynamic_ntk_results_unchanged(model_dirs, case):
    first, follow_up, expected_hit = dynamic_cases()[case]
    gen = GenerationConfig(max_new_tokens=20, ignore_eos=True, logprobs=3)  # 40 + 20 or 80 + 20: both sides
    on, off = engines(model_dirs["dynamic"])
    for engine in (on, off):
        run(engine, first, gen)
    before = hit_tokens(on)
    assert_same_results(run(on, [follow_up], gen), run(off, [follow_up], gen))
    assert hit_tokens(on) - before == expected_hit


def test_dynamic_ntk_multi_turn_reuses_generated_tokens_below_the_context(model_dirs):
    """A chat turn resends the last answer: its blocks are reused while the conversation stays within the trained
    context (decoded tokens there were rotated with the unscaled base, like prompt tokens), never past it."""
    on, off = engines(model_dirs["dynamic"])
    gen = GenerationConfig(max_new_tokens=30, ignore_eos=True, logprobs=3)
    turn = random_prompt(20, seed=60)
    for expected_hit in (48, 0):  # turn 2: 20 + 30 + 5 = 55 <= 64 tokens; turn 3: 55 + 30 + 5 > 64
        first_on, first_off = run(on, [turn], gen)[0], run(off, [turn], gen)[0]
        assert_same_results([first_on], [first_off])
        turn = first_on.token_ids + random_prompt(5, seed=61 + expected_hit)
        before = hit_tokens(on)
        assert_same_results(run(on, [turn], gen), run(off, [turn], gen))
        assert hit_tokens(on) - before == expected_hit
        assert len(turn) <= MAX_POSITIONS if expected_hit else len(turn) > MAX_POSITIONS


def test_dynamic_ntk_without_the_rotation_in_the_hash_would_differ(model_dirs, monkeypatch):
    """The control that keeps the tests above honest: forget the base in the hash, and a prompt longer than the
    trained context reuses keys rotated with another prompt's base, and its results change."""
    import lmx.engine.block_manager as block_manager

    first, follow_up, _ = dynamic_cases()["above, longer"]
    gen = GenerationConfig(max_new_tokens=20, ignore_eos=True, logprobs=3)
    on, off = engines(model_dirs["dynamic"])
    monkeypatch.setattr(block_manager, "rotation_key", lambda *args: ())
    run(on, first, gen)
    got, expected = run(on, [follow_up], gen)[0], run(off, [follow_up], gen)[0]
    assert got.num_cached_tokens == 80
    diff = max(abs(g[0] - e[0]) for g, e in zip(got.logprobs, expected.logprobs))
    assert got.output_ids != expected.output_ids or diff > 100 * LOGPROB_ATOL
