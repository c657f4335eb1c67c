"""Incremental detokenization: a sequence's output text, a few tokens at a time, with stop words.

One ``Detokenizer`` per generated sequence is the only place where output tokens become text: the engine's stop-word
check, ``Pipeline``'s answers and streams, and the server's streams all read it, so streamed deltas always add up to
the non-streamed answer.

Each step decodes only a small window of tokens, never the whole output (the cost of an answer is linear in its
length). The window trick is the one most engines use: the text of tokens ``[prefix, n)`` minus the text of
``[prefix, read)`` is what tokens ``[read, n)`` add. Decoding them with a few tokens of left context keeps what
context-dependent decoders do at a token's start (SentencePiece's leading space, byte-level merges); the window
moves on only once the new text ends in a complete character, so a character split across byte tokens is never
half-emitted.

``text`` is everything decoded so far, cut at the first stop word. Of it, ``stable_len`` characters can be
released: while the sequence runs, a tail that could still grow into a stop word is held back.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

_REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence


class Detokenizer:
    """The output text of one sequence. Call ``update(output_ids)`` after each new token; read ``text``."""

    def __init__(self, tokenizer: Any, stop_words: Seq[str] = (), skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._stop_words = tuple(w for w in stop_words if w)
        self._longest_stop = max((len(w) for w in self._stop_words), default=0)
        self._prefix = 0  # the window's first token
        self._read = 0  # tokens before this one are in self.text
        self._seen = 0  # how many output ids update() has been given
        self.text = ""
        self.stop_offset: int | None = None  # where the first stop word began (text is cut there)

    @property
    def stopped(self) -> bool:
        return self.stop_offset is not None

    def _decode(self, ids: Seq[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def update(self, output_ids: Seq[int]) -> str:
        """Take the sequence's output ids so far (the new ones at the end); return the text they added."""
        if self.stopped or len(output_ids) == self._seen:
            return ""
        self._seen = len(output_ids)
        before = self._decode(output_ids[self._prefix : self._read])
        after = self._decode(output_ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""  # nothing new yet, or a character still incomplete: wait for the next token
        new = after[len(before) :]
        self._prefix, self._read = self._read, len(output_ids)
        start = len(self.text)
        self.text += new
        if self._stop_words:
            self._find_stop(start)
        return self.text[start:]

    def finish(self, output_ids: Seq[int]) -> str:
        """The sequence has ended: take whatever is still pending (an incomplete character is kept as U+FFFD)."""
        if self.stopped or self._read == len(output_ids):
            return ""
        before = self._decode(output_ids[self._prefix : self._read])
        after = self._decode(output_ids[self._prefix :])
        self._prefix = self._read = self._seen = len(output_ids)
        start = len(self.text)
        self.text += after[len(before) :] if after.startswith(before) else after
        if self._stop_words:
            self._find_stop(start)
        return self.text[start:]

    def _find_stop(self, start: int) -> None:
        # A stop word that ends in the new text began at most len(word) - 1 characters before it.
        lo = max(0, start - self._longest_stop + 1)
        hits = [i for i in (self.text.find(w, lo) for w in self._stop_words) if i >= 0]
        if hits:
            self.stop_offset = min(hits)
            self.text = self.text[: self.stop_offset]

    def stable_len(self, finished: bool) -> int:
        """How many characters of ``text`` may be released: all once finished, else all but a stop-word prefix."""
        if finished or self.stopped or not self._stop_words:
            return len(self.text)
        return len(self.text) - _stop_prefix_len(self.text, self._stop_words)


def _stop_prefix_len(text: str, stop_words: Seq[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop word."""
    longest = 0
    for word in stop_words:
        for k in range(min(len(word) - 1, len(text)), longest, -1):
            if text.endswith(word[:k]):
                longest = k
                break
    return longest
