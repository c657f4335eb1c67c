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
