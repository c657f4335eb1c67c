"""Continuous batching with chunked prefill and preemption by recomputation: plain Python, no tensors.

Every step gets a token budget (``max_prefill_token_num``). Running sequences are served first, decodes before
prefills (a decode costs one token of the budget), then waiting sequences are admitted first come, first served,
while the batch has room and the cache has blocks for their first chunk. A prompt longer than the budget is
prefilled over several steps. When a running sequence needs a block and none is free, the most recently admitted
unscheduled sequence is preempted: its blocks are freed and it waits, at the head of the queue, to be recomputed.
Nothing here can fail on a full cache: ``Sequence.max_len`` never exceeds the cache's capacity, so a sequence
running alone always fits.

With prefix caching, an admitted sequence (new or preempted) first takes the longest chain of cached blocks that
matches its tokens (``BlockManager.cached_prefix``): those tokens cost no budget and are not recomputed. After each
step the blocks a sequence has filled are named, so the sequences admitted after it can reuse them.
"""

from __future__ import annotations

from collections import deque

from .block_manager import BlockManager
from .sequence import ScheduledChunk, Sequence, SequenceStatus


class EngineBusyError(RuntimeError):
    """The waiting queue is full (``EngineConfig.max_queued_requests``): nothing was queued; try again later."""


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_batch_size: int, max_prefill_token_num: int,
                 max_queued_requests: int | None = None) -> None:  # fmt: skip
        self.block_manager = block_manager
        self.max_batch_size = max_batch_size
        self.max_prefill_token_num = max_prefill_token_num
        self.max_queued_requests = max_queued_requests  # None: no limit
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        """Queue ``seq``; ``EngineBusyError`` when ``max_queued_requests`` are already waiting (preempted
        sequences go back to the queue whatever its length: they were admitted once)."""
        # Internal invariant: the engine validated the request against session_len and the cache.
        assert seq.num_tokens <= seq.max_len <= self.block_manager.capacity_tokens + 1
        if self.max_queued_requests is not None and len(self.waiting) >= self.max_queued_requests:
            raise EngineBusyError(
                f"engine: {len(self.waiting)} requests are already waiting (max_queued_requests="
                f"{self.max_queued_requests}); try again later"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- scheduling ----------------------------------------------------------------------------------------------

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_prefill_token_num
        scheduled: list[ScheduledChunk] = []
        taken: set[int] = set()
        for seq in sorted(self.running, key=lambda s: s.num_uncomputed_tokens > 1):  # decodes first (stable)
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, seq.num_computed_tokens + n, taken):
                continue
            scheduled.append(ScheduledChunk(seq, n))
            taken.add(seq.seq_id)
            budget -= n
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            cached = bm.cached_prefix(seq)
            start = len(cached) * bm.block_size
            n = min(seq.num_tokens - start, budget)
            if not bm.can_admit(cached, start + n):
                break
            self.waiting.popleft()
            seq.num_cached_tokens = seq.num_computed_tokens = bm.admit(seq, cached, start + n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledChunk(seq, n))
            budget -= n
        return scheduled

    def _make_room(self, seq: Sequence, num_tokens: int, taken: set[int]) -> bool:
        """Grow ``seq`` to ``num_tokens`` cached tokens, preempting others (or ``seq`` itself) until it fits."""
        bm = self.block_manager
        while not bm.can_grow(seq.seq_id, num_tokens):
            victims = [s for s in self.running if s.seq_id not in taken and s is not seq]
            victim = victims[-1] if victims else seq
            self._preempt(victim)
            if victim is seq:
                return False
        bm.grow(seq.seq_id, num_tokens)
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Send ``seq`` back to the head of the queue; blocks other sequences hold stay theirs."""
        self.num_preemptions += 1
        self.running.remove(seq)
        self.block_manager.free(seq.seq_id)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)

    # -- after the step ------------------------------------------------------------------------------------------

    def postprocess(self, scheduled: list[ScheduledChunk], sampled: dict[int, int]) -> list[Sequence]:
        """Advance each scheduled sequence; ``sampled`` maps seq_id to its new token. Returns the finished ones."""
        finished = []
        for chunk in scheduled:
            seq = chunk.seq
            seq.num_computed_tokens += chunk.num_tokens
            self.block_manager.cache_computed_blocks(seq)  # perplexity requests populate the cache too
            if seq.perplexity:
                if seq.num_computed_tokens == seq.num_tokens:
                    finished.append(self.finish(seq, "stop"))
                continue
            token = sampled.get(seq.seq_id)
            if token is None:
                continue
            seq.token_ids.append(token)
            if token in seq.stop_token_ids:
                finished.append(self.finish(seq, "stop"))
            elif seq.num_tokens >= seq.max_len:
                finished.append(self.finish(seq, "length"))
        return finished

    def finish(self, seq: Sequence, reason: str) -> Sequence:
        """End ``seq`` (also while waiting: an abort) and give back its blocks."""
        if seq.is_finished:
            return seq
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq.seq_id)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        return seq

    def stats(self) -> dict[str, int | float | bool]:
        """``BlockManager.stats()`` (blocks, prefix-cache hit rate, evictions) plus the queues and preemptions."""
        return {
            **self.block_manager.stats(),
            "running": len(self.running),
            "waiting": len(self.waiting),
            "preemptions": self.num_preemptions,
        }
