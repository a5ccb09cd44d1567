"""Row plans: how a token store is cut into fixed-length training rows.

A row of length L holds inputs ``x[0:L]`` and next-token targets ``x[1:L+1]``
of one or more *pieces* (contiguous token spans). Consecutive pieces of a
document overlap by one token, so every next-token transition of every
document is a target exactly once per epoch; this is what lets an epoch over
book-length documents and a short context cover all text.

* ``PackPlan`` (``packing='pack'``): each document is cut into pieces of L
  predictions; a full piece fills a row on its own, and the shorter last
  pieces are packed several to a row (best fit, largest first) with padding.
  Every piece is its own segment: ``segment_ids`` count 1, 2, ... within the
  row, ``positions`` restart at 0, padding has segment 0 and loss mask 0.
* ``ConcatPlan`` (``packing='concat'``): documents in a given order (random or
  in-context) form one stream separated by end-of-document ids, cut into rows
  that each are a single segment with positions 0..L-1.

Plans hold only per-document numbers, never token copies; ``assemble`` gathers
a batch of rows from the (memory-mapped) token array with vectorised indexing.
"""

from __future__ import annotations

import bisect

import numpy as np

from rope_lab.data.errors import DataConfigError
from rope_lab.data.store import TokenStore

BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


def _empty_batch(num_rows: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  return {
      "inputs": np.full((num_rows, seq_len), pad_id, dtype=np.int32),
      "targets": np.full((num_rows, seq_len), pad_id, dtype=np.int32),
      "positions": np.zeros((num_rows, seq_len), dtype=np.int32),
      "segment_ids": np.zeros((num_rows, seq_len), dtype=np.int32),
      "loss_mask": np.zeros((num_rows, seq_len), dtype=np.float32),
  }


def _fill_single_segment_rows(batch, rows: np.ndarray, windows: np.ndarray) -> None:
  """Writes rows whose L+1 tokens form one segment (a full piece, or a concat row)."""
  seq_len = windows.shape[1] - 1
  batch["inputs"][rows] = windows[:, :-1]
  batch["targets"][rows] = windows[:, 1:]
  batch["positions"][rows] = np.arange(seq_len, dtype=np.int32)
  batch["segment_ids"][rows] = 1
  batch["loss_mask"][rows] = 1.0


def best_fit_decreasing(sizes: np.ndarray, capacity: int, order: np.ndarray) -> list[list[int]]:
  """Packs items into bins of ``capacity``; returns the item indices of each bin.

  Items are placed largest first (ties in ``order``) into the fullest bin that
  still has room, which leaves little padding for a few thousand items at a
  cost of O(n log n) plus list inserts.
  """
  ranked = sorted(order.tolist(), key=lambda i: -int(sizes[i]))
  bins: list[list[int]] = []
  free: list[tuple[int, int]] = []  # (room left, bin index), sorted.
  for item in ranked:
    size = int(sizes[item])
    slot = bisect.bisect_left(free, (size, -1))
    if slot < len(free):
      room, index = free.pop(slot)
    else:
      room, index = capacity, len(bins)
      bins.append([])
    bins[index].append(item)
    if room - size > 0:
      bisect.insort(free, (room - size, index))
  return bins


class PackPlan:
  """Per-document segments: full pieces fill rows, last pieces share padded rows."""

  def __init__(self, store: TokenStore, seq_len: int, seed: int, pad_id: int):
    self.store, self.seq_len, self.pad_id = store, seq_len, pad_id
    predictions = store.lengths() - 1  # The closing end-of-document is a target, never an input.
    self._full_per_doc = predictions // seq_len
    self._full_cumsum = np.cumsum(self._full_per_doc)
    self.num_full_rows = int(self._full_cumsum[-1]) if store.num_docs else 0
    tail_sizes = predictions - self._full_per_doc * seq_len
    tail_docs = np.flatnonzero(tail_sizes > 0)
    tie_break = np.random.default_rng(seed).permutation(len(tail_docs))
    bins = best_fit_decreasing(tail_sizes[tail_docs], seq_len, tie_break)
    # Tail rows in CSR form: pieces of row r are [row_splits[r], row_splits[r+1]).
    docs = tail_docs[np.asarray([i for b in bins for i in b], dtype=np.int64)]
    self._tail_starts = store.offsets[docs] + self._full_per_doc[docs] * seq_len
    self._tail_sizes = tail_sizes[docs]
    self._tail_row_splits = np.concatenate([[0], np.cumsum([len(b) for b in bins])]).astype(
        np.int64)
    self.num_rows = self.num_full_rows + len(bins)

  def _full_row_starts(self, rows: np.ndarray) -> np.ndarray:
    docs = np.searchsorted(self._full_cumsum, rows, side="right")
    piece = rows - (self._full_cumsum[docs] - self._full_per_doc[docs])
    return self.store.offsets[docs] + piece * self.seq_len

  def assemble(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The batch made of plan rows ``rows`` (any ints in [0, num_rows))."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    batch = _empty_batch(len(rows), self.seq_len, self.pad_id)
    is_full = rows < self.num_full_rows
    if is_full.any():
      starts = self._full_row_starts(rows[is_full])
      windows = self.store.tokens[starts[:, None] + np.arange(self.seq_len + 1)]
      _fill_single_segment_rows(batch, np.flatnonzero(is_full), windows)
    for out_row in np.flatnonzero(~is_full):
      tail_row = rows[out_row] - self.num_full_rows
      cursor = 0
      for segment, piece in enumerate(range(self._tail_row_splits[tail_row],
                                            self._tail_row_splits[tail_row + 1]), start=1):
        start, size = int(self._tail_starts[piece]), int(self._tail_sizes[piece])
        window = self.store.tokens[start:start + size + 1]
        span = slice(cursor, cursor + size)
        batch["inputs"][out_row, span] = window[:-1]
        batch["targets"][out_row, span] = window[1:]
        batch["positions"][out_row, span] = np.arange(size, dtype=np.int32)
        batch["segment_ids"][out_row, span] = segment
        batch["loss_mask"][out_row, span] = 1.0
        cursor += size
    return batch


class ConcatPlan:
  """Documents joined in ``order`` into one stream, cut into single-segment rows."""

  def __init__(self, store: TokenStore, seq_len: int, order: np.ndarray, pad_id: int):
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(store.num_docs)):
      raise ValueError("order must be a permutation of the store's documents")
    self.store, self.seq_len, self.pad_id, self.order = store, seq_len, pad_id, order
    self._stream_starts = np.concatenate([[0], np.cumsum(store.lengths()[order])]).astype(
        np.int64)
    total = int(self._stream_starts[-1])
    # A row needs L+1 stream tokens; rows overlap by one token.
    self.num_rows = max((total - 1) // seq_len, 0)
    if self.num_rows == 0:
      raise DataConfigError(
          f"seq_len={seq_len} is longer than the whole training split ({total} tokens); "
          "use a shorter seq_len or a larger dataset")

  def assemble(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    stream = rows[:, None] * self.seq_len + np.arange(self.seq_len + 1)
    slot = np.searchsorted(self._stream_starts, stream, side="right") - 1
    source = self.store.offsets[self.order[slot]] + (stream - self._stream_starts[slot])
    batch = _empty_batch(len(rows), self.seq_len, self.pad_id)
    _fill_single_segment_rows(batch, np.arange(len(rows)), self.store.tokens[source])
    return batch
