"""Block allocator over the paged KV cache: plain Python, no tensors.

The cache holds ``num_blocks`` blocks of ``block_size`` token slots per layer. A sequence owns an ordered list of
blocks (its block table); token ``i`` of the sequence lives in slot ``block_table[i // block_size] * block_size +
i % block_size``. Blocks are handed out from a free list and come back when a sequence finishes or is preempted.
"""

from __future__ import annotations

from collections import deque


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks: expected >= 1, got {num_blocks!r}")
        if block_size < 1:
            raise ValueError(f"block_size: expected >= 1, got {block_size!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._tables: dict[int, list[int]] = {}  # seq_id -> block table

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

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
        return self.num_new_blocks(seq_id, num_tokens) <= len(self._free)

    def grow(self, seq_id: int, num_tokens: int) -> list[int]:
        """Extend ``seq_id``'s block table to hold ``num_tokens`` tokens; returns the table.

        Raises ``RuntimeError`` when the free list is too short: callers check ``can_grow`` first (an internal
        invariant, not a user error).
        """
        needed = self.num_new_blocks(seq_id, num_tokens)
        if needed > len(self._free):
            raise RuntimeError(f"BlockManager.grow: seq {seq_id} needs {needed} blocks, {len(self._free)} are free")
        table = self._tables.setdefault(seq_id, [])
        for _ in range(needed):
            table.append(self._free.popleft())
        return table

    def free(self, seq_id: int) -> None:
        """Give back every block of ``seq_id`` (no-op when it holds none)."""
        table = self._tables.pop(seq_id, [])
        # Freed blocks go to the front of the free list, in table order, so they are reused first (warm memory).
        self._free.extendleft(reversed(table))
