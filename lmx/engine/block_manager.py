"""Block allocator over the paged KV cache, with prefix caching: plain Python, no tensors.

The cache holds ``num_blocks`` blocks of ``block_size`` token slots per layer. A sequence owns an ordered list of
blocks (its block table); token ``i`` of the sequence lives in slot ``block_table[i // block_size] * block_size +
i % block_size``. Every block has a reference count: the number of sequences whose table holds it.

Prefix caching. Once every token of a *full* block has its keys and values in the cache, the block gets a name::

    hash(block 0) = H(root, tokens of block 0, rotation of block 0)
    hash(block i) = H(hash(block i - 1), tokens of block i, rotation of block i)
    root          = H(the model's RopeConfig, block_size)

where ``rotation`` is ``rotation_key`` below (the bases the block's tokens were rotated with) and H is SHA-256.
The chain makes a hash name the whole prefix, so two blocks with one hash hold the same keys and values. A new
sequence takes the longest chain of named blocks that matches its tokens and computes only the rest. A block no
sequence holds keeps its name and stays in the cache (``free_blocks`` counts it: it can be taken at any time);
the allocator hands out never-named blocks first, then evicts named ones least recently freed first.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plain Python: the RoPE config is a dataclass, the sequence holds lists
    from lmx.rope import RopeConfig

    from .sequence import Sequence


def rotation_key(rope: RopeConfig | None, prompt_len: int, start: int, end: int) -> tuple[tuple[int, float], ...]:
    """How the keys of positions ``start..end-1`` of a sequence with a ``prompt_len``-token prompt are rotated:
    ``(num_tokens, base)`` runs, part of a block's hash.

    The rule (DESIGN §3, ``hf`` mode, as ``RopeConfig.rope_seq_len`` states it): a prompt token, at any position and
    however the prompt is chunked, is rotated with ``base'(prompt_len)``; a generated token at position ``p`` with
    ``base'(p + 1)``, also when a preempted sequence recomputes it. ``base'(L)`` is ``RopeConfig.dynamic_base``: the
    model's base unless dynamic NTK scaling is on and ``L > max_position_embeddings``. So below the trained context
    every block of one model has one rotation and prefixes are shared freely; above it, a prompt's blocks match only
    another prompt of the same length (or the same sequence recomputed). Every other RoPE setting is in the root.
    """
    if rope is None:  # no position encoding to speak of (scheduler tests)
        return ()
    return tuple((n, rope.dynamic_base(seq_len)) for n, seq_len in rope.rope_seq_len_runs(prompt_len, start, end))


def _chain_hash(parent: bytes, token_ids: list[int], rotation: tuple[tuple[int, float], ...]) -> bytes:
    h = hashlib.sha256(parent)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    for num_tokens, base in rotation:
        h.update(struct.pack("<qd", num_tokens, base))
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, rope: RopeConfig | None = None,
                 enable_prefix_caching: bool = False) -> None:  # fmt: skip
        if num_blocks < 1:
            raise ValueError(f"num_blocks: expected >= 1, got {num_blocks!r}")
        if block_size < 1:
            raise ValueError(f"block_size: expected >= 1, got {block_size!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.rope = rope
        self.enable_prefix_caching = enable_prefix_caching
        self._root = hashlib.sha256(f"lmx-kv-v1 {rope!r} block_size={block_size}".encode()).digest()
        self._refs = [0] * num_blocks
        self._hash_of: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}  # hash -> the block holding that content
        self._empty: deque[int] = deque(range(num_blocks))  # unheld, unnamed: taken first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # unheld, named: least recently freed first
        self._tables: dict[int, list[int]] = {}  # seq_id -> block table
        self._num_named: dict[int, int] = {}  # seq_id -> how many leading blocks of its table are named
        self.num_evictions = 0
        self.num_queried_tokens = 0  # tokens of sequences admitted with a cache lookup
        self.num_hit_tokens = 0  # of those, tokens whose keys and values came from the cache

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds: what allocations can take (cached ones are evicted on demand)."""
        return len(self._empty) + len(self._evictable)

    @property
    def capacity_tokens(self) -> int:
        """The most tokens one sequence can ever hold (the whole cache)."""
        return self.num_blocks * self.block_size

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, seq_id: int) -> list[int]:
        return self._tables.get(seq_id, [])

    def num_new_blocks(self, seq_id: int, num_tokens: int) -> int:
        """Blocks ``seq_id`` still lacks to hold ``num_tokens`` tokens in all."""
        return max(0, self.blocks_needed(num_tokens) - len(self.block_table(seq_id)))

    def can_grow(self, seq_id: int, num_tokens: int) -> bool:
        return self.num_new_blocks(seq_id, num_tokens) <= self.num_free_blocks

    def grow(self, seq_id: int, num_tokens: int) -> list[int]:
        """Extend ``seq_id``'s block table to hold ``num_tokens`` tokens; returns the table.

        Raises ``RuntimeError`` when too few blocks are free: callers check ``can_grow`` first (an internal
        invariant, not a user error).
        """
        needed = self.num_new_blocks(seq_id, num_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(
                f"BlockManager.grow: seq {seq_id} needs {needed} blocks, {self.num_free_blocks} are free"
            )
        table = self._tables.setdefault(seq_id, [])
        for _ in range(needed):
            block = self._take()
            self._refs[block] = 1
            table.append(block)
        return table

    def free(self, seq_id: int) -> None:
        """Drop ``seq_id``'s hold on its blocks (no-op when it holds none); a block another sequence holds stays."""
        table = self._tables.pop(seq_id, [])
        self._num_named.pop(seq_id, None)
        # Tail first: a sequence's last blocks are the least likely to be shared, so they are evicted first.
        # Unnamed blocks go to the front of the empty list in table order, to be reused first (warm memory).
        for block in reversed(table):
            self._refs[block] -= 1
            assert self._refs[block] >= 0, f"block {block} freed more often than taken"
            if self._refs[block]:
                continue
            if self._hash_of[block] is None:
                self._empty.appendleft(block)
            else:
                self._evictable[block] = None

    def _take(self) -> int:
        if self._empty:
            return self._empty.popleft()
        block, _ = self._evictable.popitem(last=False)
        del self._cached[self._hash_of[block]]
        self._hash_of[block] = None
        self.num_evictions += 1
        return block

    # -- prefix caching ------------------------------------------------------------------------------------------

    def _hashes(self, seq: Sequence, count: int) -> list[bytes]:
        """The names of ``seq``'s first ``count`` full blocks, computed once per sequence (tokens only grow, and the
        prompt length, which fixes the rotation, never changes)."""
        hashes, bs = seq.block_hashes, self.block_size
        while len(hashes) < count:
            i = len(hashes)
            parent = hashes[-1] if hashes else self._root
            rotation = rotation_key(self.rope, seq.num_prompt_tokens, i * bs, (i + 1) * bs)
            hashes.append(_chain_hash(parent, seq.token_ids[i * bs : (i + 1) * bs], rotation))
        return hashes[:count]

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """The cached blocks ``seq`` can start from (nothing is taken yet): the longest chain matching its tokens,
        leaving at least its last token to compute (its logits are sampled from). Empty when caching is off and for
        perplexity requests, which need the logits of every token and so compute every token."""
        if not self.enable_prefix_caching or seq.perplexity:
            return []
        blocks = []
        for h in self._hashes(seq, (seq.num_tokens - 1) // self.block_size):
            block = self._cached.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def can_admit(self, cached: list[int], num_tokens: int) -> bool:
        """Whether a sequence holding no block can start from ``cached`` and hold ``num_tokens`` tokens."""
        reclaimed = sum(1 for block in cached if self._refs[block] == 0)  # hits that were counted as free
        return self.blocks_needed(num_tokens) - len(cached) <= self.num_free_blocks - reclaimed

    def admit(self, seq: Sequence, cached: list[int], num_tokens: int) -> int:
        """Give ``seq`` (holding no block) the ``cached`` blocks, then grow it to ``num_tokens`` tokens; returns the
        number of tokens whose keys and values are already in the cache."""
        assert seq.seq_id not in self._tables, f"seq {seq.seq_id} already holds blocks"
        for block in cached:
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
        self._tables[seq.seq_id] = list(cached)
        self._num_named[seq.seq_id] = len(cached)
        self.grow(seq.seq_id, num_tokens)
        hit_tokens = len(cached) * self.block_size
        if self.enable_prefix_caching and not seq.perplexity:
            self.num_queried_tokens += seq.num_tokens
            self.num_hit_tokens += hit_tokens
        return hit_tokens

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Name ``seq``'s full blocks whose tokens are all computed, so later sequences can reuse them.

        Content can be computed twice: two equal prompts side by side, or a prompt ending on a block boundary,
        whose last block is recomputed (its last token's logits are needed) although it is cached. An unheld copy
        then gives its name to the new block (and becomes the first to be reused); a copy another sequence holds
        keeps it, and the new block stays unnamed (block tables only grow, so the copy is not swapped in)."""
        if not self.enable_prefix_caching:
            return
        table = self._tables.get(seq.seq_id)
        if table is None:
            return
        start = self._num_named.get(seq.seq_id, 0)
        full = seq.num_computed_tokens // self.block_size
        if full <= start:
            return
        hashes = self._hashes(seq, full)
        for i in range(start, full):
            block, h = table[i], hashes[i]
            if self._hash_of[block] is not None:
                continue
            other = self._cached.get(h)
            if other is not None:
                if self._refs[other]:
                    continue
                del self._evictable[other]
                self._hash_of[other] = None
                self._empty.appendleft(other)
            self._hash_of[block] = h
            self._cached[h] = block
        self._num_named[seq.seq_id] = full

    def stats(self) -> dict[str, int | float | bool]:
        """Cache occupancy and prefix-cache effect since start-up.

        ``free_blocks``: held by no sequence (allocatable; includes cached ones). ``used_blocks``: held by at least
        one sequence. ``cached_blocks``: named blocks, reusable by a new request (held or not). ``evictions``: named
        blocks taken for other content. ``hit_rate`` = ``cached_tokens / prompt_tokens``, over the generation
        requests admitted (preempted ones again at readmission); perplexity requests never read the cache.
        """
        return {
            "prefix_caching": self.enable_prefix_caching,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "free_blocks": self.num_free_blocks,
            "used_blocks": self.num_blocks - self.num_free_blocks,
            "cached_blocks": len(self._cached),
            "evictions": self.num_evictions,
            "prompt_tokens": self.num_queried_tokens,
            "cached_tokens": self.num_hit_tokens,
            "hit_rate": self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0,
        }
