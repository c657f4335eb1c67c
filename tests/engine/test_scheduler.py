"""Block allocator and scheduler: plain Python, no model."""

import pytest

from lmx.engine.block_manager import BlockManager
from lmx.engine.scheduler import Scheduler
from lmx.engine.sequence import Sequence, SequenceStatus


def test_block_manager_grow_and_free():
    bm = BlockManager(num_blocks=4, block_size=4)
    assert bm.grow(1, 5) == [0, 1]
    assert bm.grow(1, 8) == [0, 1]  # already holds 8 slots
    assert bm.grow(2, 1) == [2]
    assert not bm.can_grow(1, 13)
    assert bm.can_grow(1, 12)
    with pytest.raises(RuntimeError):
        bm.grow(2, 12)
    bm.free(1)
    assert bm.num_free_blocks == 3
    assert bm.grow(3, 9) == [0, 1, 3]
    bm.free(99)  # unknown sequence: no-op
    assert bm.capacity_tokens == 16


@pytest.mark.parametrize("num_blocks, block_size", [(0, 4), (4, 0)])
def test_block_manager_rejects_bad_sizes(num_blocks, block_size):
    with pytest.raises(ValueError, match="num_blocks|block_size"):
        BlockManager(num_blocks, block_size)


def _run_to_completion(sched, fake_token=7, max_steps=1000):
    """Drive the scheduler like the engine does, sampling ``fake_token`` every time; returns the step log."""
    log = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return log
        chunks = sched.schedule()
        assert chunks, "scheduler stalled"
        used = sum(c.num_tokens for c in chunks)
        assert used <= sched.max_prefill_token_num
        for c in chunks:  # every scheduled token has a cache slot
            table = sched.block_manager.block_table(c.seq.seq_id)
            assert len(table) * sched.block_manager.block_size >= c.start + c.num_tokens
        log.append([(c.seq.seq_id, c.start, c.num_tokens) for c in chunks])
        sched.postprocess(chunks, {c.seq.seq_id: fake_token for c in chunks if c.needs_sample})
    raise AssertionError("did not finish")


def test_chunked_prefill_then_decode():
    sched = Scheduler(BlockManager(16, 4), max_batch_size=4, max_prefill_token_num=5)
    seq = Sequence(list(range(12)), max_len=15)
    sched.add(seq)
    log = _run_to_completion(sched)
    assert log[:3] == [[(seq.seq_id, 0, 5)], [(seq.seq_id, 5, 5)], [(seq.seq_id, 10, 2)]]
    assert [step[0][2] for step in log[3:]] == [1, 1]  # decodes
    assert seq.output_ids == [7, 7, 7] and seq.finish_reason == "length"
    assert sched.block_manager.num_free_blocks == 16


def test_stop_token_and_batch_limit():
    sched = Scheduler(BlockManager(64, 4), max_batch_size=2, max_prefill_token_num=64)
    seqs = [Sequence([1, 2, 3], max_len=100, stop_token_ids=frozenset({7})) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    first = sched.schedule()
    assert len(first) == 2  # max_batch_size
    sched.postprocess(first, {c.seq.seq_id: 7 for c in first})
    assert all(s.finish_reason == "stop" for s in seqs[:2])
    _run_to_completion(sched)
    assert seqs[2].output_ids == [7]


def test_preemption_recomputes_and_everyone_finishes():
    # 6 blocks of 2 slots = 12 tokens; three sequences that want 8 tokens each cannot all stay resident.
    sched = Scheduler(BlockManager(6, 2), max_batch_size=8, max_prefill_token_num=16)
    seqs = [Sequence([1, 2, 3], max_len=8) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    _run_to_completion(sched)
    assert all(s.status is SequenceStatus.FINISHED and s.output_ids == [7] * 5 for s in seqs)
    assert sum(s.num_preemptions for s in seqs) > 0
    assert sched.block_manager.num_free_blocks == 6


def test_lone_sequence_filling_the_cache_does_not_loop():
    sched = Scheduler(BlockManager(2, 4), max_batch_size=2, max_prefill_token_num=3)
    seq = Sequence([1, 2, 3, 4, 5], max_len=8)
    sched.add(seq)
    _run_to_completion(sched)
    assert seq.num_tokens == 8 and seq.num_preemptions == 0


def test_perplexity_sequence_finishes_after_prefill():
    sched = Scheduler(BlockManager(8, 4), max_batch_size=2, max_prefill_token_num=4)
    seq = Sequence(list(range(10)), max_len=10, perplexity=True)
    sched.add(seq)
    log = _run_to_completion(sched)
    assert [step[0][2] for step in log] == [4, 4, 2]
    assert seq.output_ids == [] and seq.finish_reason == "stop"


def test_abort_waiting_and_running():
    sched = Scheduler(BlockManager(8, 4), max_batch_size=1, max_prefill_token_num=8)
    a, b = Sequence([1, 2], max_len=10), Sequence([3, 4], max_len=10)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(b, "abort")
    sched.finish(a, "abort")
    assert not sched.has_unfinished() and sched.block_manager.num_free_blocks == 8


# -- prefix caching (plain Python: fake token ids, no model) ------------------------------------------------------


def _caching_scheduler(num_blocks, block_size, **kwargs):
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching=True)
    return Scheduler(bm, max_batch_size=8, max_prefill_token_num=kwargs.pop("budget", 64), **kwargs)


def _finish(sched, *seqs):
    for s in seqs:
        sched.add(s)
    return _run_to_completion(sched)


def test_prefix_hit_skips_cached_blocks_and_keeps_the_last_token():
    sched = _caching_scheduler(16, 4)
    _finish(sched, Sequence(list(range(12)), max_len=13))
    again = Sequence(list(range(12)), max_len=13)  # 12 tokens = 3 full blocks: the third is recomputed
    log = _finish(sched, again)
    assert log[0] == [(again.seq_id, 8, 4)] and again.num_cached_tokens == 8
    longer = Sequence(list(range(14)), max_len=15)  # shares 12 tokens, ends mid-block
    log = _finish(sched, longer)
    assert log[0] == [(longer.seq_id, 12, 2)]
    stats = sched.stats()
    assert stats["prompt_tokens"] == 12 + 12 + 14 and stats["cached_tokens"] == 8 + 12
    assert stats["hit_rate"] == pytest.approx(20 / 38)
    assert stats["free_blocks"] == 16 and stats["used_blocks"] == 0 and stats["cached_blocks"] > 0


def test_prefix_cache_off_reads_and_names_nothing():
    sched = Scheduler(BlockManager(16, 4), max_batch_size=8, max_prefill_token_num=64)
    _finish(sched, Sequence(list(range(12)), max_len=13))
    again = Sequence(list(range(12)), max_len=13)
    assert _finish(sched, again)[0] == [(again.seq_id, 0, 12)]
    assert sched.stats()["cached_blocks"] == 0 and sched.stats()["prompt_tokens"] == 0


def test_perplexity_requests_populate_but_never_read():
    sched = _caching_scheduler(16, 4)
    ppl = Sequence(list(range(12)), max_len=12, perplexity=True)
    _finish(sched, ppl)
    ppl2 = Sequence(list(range(12)), max_len=12, perplexity=True)
    assert _finish(sched, ppl2)[0] == [(ppl2.seq_id, 0, 12)]  # every token's logits are needed
    gen = Sequence(list(range(12)), max_len=13)
    assert _finish(sched, gen)[0] == [(gen.seq_id, 8, 4)]


def test_shared_blocks_are_reference_counted():
    bm = BlockManager(8, 4, enable_prefix_caching=True)
    sched = Scheduler(bm, max_batch_size=8, max_prefill_token_num=64)
    _finish(sched, Sequence(list(range(9)), max_len=10))
    a, b = Sequence(list(range(9)), max_len=20), Sequence(list(range(9)), max_len=20)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    shared = bm.block_table(a.seq_id)[:2]
    assert bm.block_table(b.seq_id)[:2] == shared
    sched.finish(a, "abort")  # cancellation: b still holds the shared blocks
    assert all(bm._refs[blk] == 1 for blk in shared)
    assert bm.block_table(b.seq_id)[:2] == shared
    sched._preempt(b)  # preemption of the last holder: the blocks stay cached, unheld
    assert all(bm._refs[blk] == 0 for blk in shared) and bm.num_free_blocks == 8
    assert bm.cached_prefix(b) == shared  # readmission finds them again


def test_can_admit_does_not_count_hit_blocks_twice():
    bm = BlockManager(3, 4, enable_prefix_caching=True)
    sched = Scheduler(bm, max_batch_size=8, max_prefill_token_num=64)
    _finish(sched, Sequence(list(range(9)), max_len=9, perplexity=True))  # names blocks 0, 1 (2 full)
    seq = Sequence(list(range(9)) + [50, 51, 52, 53], max_len=14)
    cached = bm.cached_prefix(seq)
    assert len(cached) == 2 and bm.num_free_blocks == 3
    assert bm.can_admit(cached, 12) and not bm.can_admit(cached, 13)  # 2 hits + 1 new block fit; 2 new do not


def test_eviction_takes_unnamed_blocks_first_then_least_recently_freed():
    bm = BlockManager(6, 2, enable_prefix_caching=True)
    sched = Scheduler(bm, max_batch_size=8, max_prefill_token_num=64)
    old = Sequence([1, 2, 3, 4, 5], max_len=5, perplexity=True)
    new = Sequence([6, 7, 8, 9, 10], max_len=5, perplexity=True)
    _finish(sched, old)
    _finish(sched, new)  # 4 named blocks (2 per sequence), 2 unnamed
    assert bm.stats()["cached_blocks"] == 4
    sched.add(Sequence([11, 12, 13], max_len=4))  # needs 2 blocks: the unnamed ones
    _run_to_completion(sched)
    assert bm.stats()["evictions"] == 0
    _finish(sched, Sequence([20, 21, 22, 23, 24], max_len=6))  # 3 blocks: one empty block + evicts old's two
    assert bm.stats()["evictions"] == 2
    probe_old, probe_new = Sequence([1, 2, 3, 4, 5], max_len=6), Sequence([6, 7, 8, 9, 10], max_len=6)
    assert bm.cached_prefix(probe_old) == [] and len(bm.cached_prefix(probe_new)) == 2


def test_a_chain_breaks_at_the_first_different_block():
    bm = BlockManager(16, 2, enable_prefix_caching=True)
    sched = Scheduler(bm, max_batch_size=8, max_prefill_token_num=64)
    _finish(sched, Sequence([1, 2, 3, 4, 5, 6, 7], max_len=7, perplexity=True))
    # block 1 differs, so block 2 ([5, 6]) cannot be reused although its tokens match: its prefix differs.
    assert len(bm.cached_prefix(Sequence([1, 2, 9, 9, 5, 6, 7], max_len=8))) == 1
    assert len(bm.cached_prefix(Sequence([1, 2, 3, 4, 5, 6, 7], max_len=8))) == 3


def test_preempted_sequence_reuses_its_own_blocks():
    sched = _caching_scheduler(6, 2, budget=16)
    seqs = [Sequence([1, 2, 3], max_len=8), Sequence([1, 2, 3], max_len=8), Sequence([4, 5, 6], max_len=8)]
    _finish(sched, *seqs)
    assert all(s.output_ids == [7] * 5 for s in seqs)
    stats = sched.stats()
    assert stats["preemptions"] > 0 and stats["cached_tokens"] > 0
    assert stats["free_blocks"] == 6


def test_rotation_key_follows_rope_seq_len():
    from lmx.engine.block_manager import rotation_key
    from lmx.rope import RopeConfig

    plain = RopeConfig(rotary_dim=8, max_position_embeddings=16)
    dyn = RopeConfig(rotary_dim=8, scaling_type="dynamic", factor=2.0, max_position_embeddings=16)
    assert rotation_key(plain, 40, 0, 4) == rotation_key(plain, 10, 0, 4) == ((4, plain.base),)
    assert rotation_key(dyn, 10, 0, 4) == rotation_key(dyn, 12, 0, 4) == ((4, dyn.base),)  # below the context
    assert rotation_key(dyn, 40, 0, 4) == ((4, dyn.dynamic_base(40)),) != rotation_key(dyn, 41, 0, 4)
    # generated tokens: base'(p + 1) each once past the trained context
    assert rotation_key(dyn, 10, 12, 16) == ((4, dyn.base),)
    assert rotation_key(dyn, 10, 16, 18) == ((1, dyn.dynamic_base(17)), (1, dyn.dynamic_base(18)))
    assert rotation_key(dyn, 18, 16, 20) == ((2, dyn.dynamic_base(18)), (1, dyn.dynamic_base(19)),
                                              (1, dyn.dynamic_base(20)))  # fmt: skip


def test_rotation_is_part_of_the_hash():
    from lmx.rope import RopeConfig

    dyn = RopeConfig(rotary_dim=8, scaling_type="dynamic", factor=2.0, max_position_embeddings=16)
    bm = BlockManager(32, 4, rope=dyn, enable_prefix_caching=True)
    sched = Scheduler(bm, max_batch_size=8, max_prefill_token_num=64)
    doc = list(range(1, 21))  # 20 tokens > 16: rotated with base'(20)
    _finish(sched, Sequence(doc, max_len=20, perplexity=True))
    assert len(bm.cached_prefix(Sequence(doc, max_len=21))) == 4  # same length, same base
    assert len(bm.cached_prefix(Sequence(doc[:19] + [99], max_len=21))) == 4
    assert bm.cached_prefix(Sequence(doc + [99], max_len=22)) == []  # base'(21): nothing matches
    assert bm.cached_prefix(Sequence(doc[:12] + [99], max_len=14)) == []  # unscaled base
