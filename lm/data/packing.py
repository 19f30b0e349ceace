"""Concat-then-split packing of a stream of token documents, and causal LM rows.

`PackIterDataset` cuts the concatenated documents into rows of `row_len` tokens, moving
`stride` tokens per row (causal LM: row_len = T + 1, stride = T, so every token is an
input once and a target once). Its checkpoint is small: the parent's state before the
oldest document still in the buffer plus how many of its tokens are consumed; restoring
re-reads (re-tokenizes) that document and skips them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import grain
import numpy as np


class Row(dict):
    """tokens, segment_ids (1, 2, ... per document within the row, 0 = padding) and
    positions of one row, `length` real tokens. Positions count from the start of each
    document's piece in this row (a document continued from the previous row restarts at
    0), so that they stay below the row length for learned position embeddings."""


def _empty_row(row_len: int) -> Row:
    return Row(tokens=np.zeros(row_len, np.int32), segment_ids=np.zeros(row_len, np.int32),
               positions=np.zeros(row_len, np.int32), length=0)


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent, row_len: int, stride: int, make_row: Callable[[Row], Any]):
        super().__init__(parent)
        self._row_len, self._stride, self._make_row = row_len, stride, make_row
        self._buffer: list[tuple[dict, np.ndarray]] = []  # (parent state before, doc tokens)
        self._offset = 0  # tokens of buffer[0] consumed
        self._exhausted = False
        self._state_now = copy.deepcopy(self._parent.get_state())

    def _fill(self) -> None:
        """Reads documents until the buffer holds a full row (or the parent ends)."""
        have = sum(len(d) for _, d in self._buffer) - self._offset
        while have < self._row_len and not self._exhausted:
            before = self._state_now
            try:
                doc = np.asarray(next(self._parent), np.int32)
            except StopIteration:
                self._exhausted = True
                break
            self._state_now = copy.deepcopy(self._parent.get_state())
            self._buffer.append((before, doc))
            have += len(doc)

    def _take_row(self) -> Row:
        row = _empty_row(self._row_len)
        filled, offset = 0, self._offset
        for seg, (_, doc) in enumerate(self._buffer, start=1):
            n = min(len(doc) - offset, self._row_len - filled)
            if n <= 0:
                break
            row["tokens"][filled:filled + n] = doc[offset:offset + n]
            row["segment_ids"][filled:filled + n] = seg
            row["positions"][filled:filled + n] = np.arange(n)
            filled, offset = filled + n, 0
        row["length"] = filled
        return row

    def _advance(self, n: int) -> None:
        self._offset += n
        while self._buffer and self._offset >= len(self._buffer[0][1]):
            self._offset -= len(self._buffer[0][1])
            self._buffer.pop(0)

    def __next__(self):
        self._fill()
        remaining = sum(len(d) for _, d in self._buffer) - self._offset
        # With overlapping rows the last `row_len - stride` tokens were already emitted.
        if remaining <= self._row_len - self._stride:
            raise StopIteration
        row = self._take_row()
        self._advance(min(self._stride, remaining))
        return self._make_row(row)

    def get_state(self) -> dict:
        parent = self._buffer[0][0] if self._buffer else self._state_now
        return {"parent": copy.deepcopy(parent), "offset": int(self._offset)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(copy.deepcopy(state["parent"]))
        self._state_now = copy.deepcopy(state["parent"])
        self._buffer, self._exhausted = [], False
        self._offset = 0
        # Re-read the partly consumed documents and skip what was already emitted.
        skip = state["offset"]
        while skip:
            self._fill()
            if not self._buffer:
                raise ValueError(f"cannot restore packing state {state}: the data ended")
            step = min(skip, len(self._buffer[0][1]) - self._offset)
            self._advance(step)
            skip -= step


class PackIterDataset(grain.IterDataset):
    """Rows of `row_len` tokens cut from the concatenation of the parent's documents."""

    def __init__(self, parent: grain.IterDataset, *, row_len: int, stride: int,
                 make_row: Callable[[Row], Any] = lambda row: row):
        super().__init__(parent)
        if not 0 < stride <= row_len:
            raise ValueError(f"need 0 < stride <= row_len, got stride={stride}, row_len={row_len}")
        self._row_len, self._stride, self._make_row = row_len, stride, make_row

    def __iter__(self):
        return _PackIterator(self._parent.__iter__(), self._row_len, self._stride,
                             self._make_row)


# ------------------------------------------------------------------------------ causal


def with_eos(tokens: list[int], eos_id: int | None) -> np.ndarray:
    """A document as packed for causal LM: <eos> first, so that it separates documents
    (the previous document's last token learns to predict the end) and starts this one."""
    prefix = [] if eos_id is None else [eos_id]
    return np.asarray(prefix + list(tokens), np.int32)


def causal_example(row: Row, *, pad_id: int, segment_ids: bool = True) -> dict[str, np.ndarray]:
    """inputs/targets (shifted by one), weights (0 past the data); a row holds T + 1 tokens."""
    tokens, n = row["tokens"], row["length"]
    T = len(tokens) - 1
    real_T = np.arange(T) < n
    example = {
        "inputs": np.where(real_T, tokens[:-1], pad_id).astype(np.int32),
        "targets": np.where(np.arange(1, T + 1) < n, tokens[1:], pad_id).astype(np.int32),
        "weights": (np.arange(1, T + 1) < n).astype(np.float32),
    }
    if segment_ids:
        example["segment_ids"] = np.where(real_T, row["segment_ids"][:-1], 0).astype(np.int32)
        example["positions"] = np.where(real_T, row["positions"][:-1], 0).astype(np.int32)
    return example
