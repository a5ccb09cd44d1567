"""PoSE (Zhu et al. 2024, positional skip-wise training): short rows, long positions.

A row of L tokens is trained at positions that span a target length N > L, so that a
fine-tune at L covers relative distances up to N - 1. As dwzhu-pku/PoSE's
``train_pose.py`` samples them, each sequence of n tokens is cut in two chunks: the first
r1 tokens, r1 ~ U{1, ..., (n + 1) // 2}, keep positions 0 .. r1 - 1; the rest are shifted
by a skip s ~ U{0, ..., N - n}, so they sit at r1 + s .. n - 1 + s. Here every packed
segment of a row is such a sequence; padding (segment 0) keeps its positions. The
reference also drops the text between the two chunks (its chunks come from different
parts of a longer document); here the tokens stay contiguous and only the positions skip.
"""

from __future__ import annotations

import numpy as np

from rope_lab.errors import DataError, check


def skip_offsets(length: int, target_length: int, rng: np.random.Generator) -> np.ndarray:
  """int32 [length]: PoSE's shift per token of one sequence (0 in the first chunk, s after)."""
  first_chunk = int(rng.integers(1, (length + 1) // 2, endpoint=True))
  skip = int(rng.integers(0, target_length - length, endpoint=True))
  return np.where(np.arange(length) < first_chunk, 0, skip).astype(np.int32)


def pose_positions(positions_BxL: np.ndarray, segment_ids_BxL: np.ndarray, target_length: int,
                   rng: np.random.Generator) -> np.ndarray:
  """int32 [B, L]: each packed segment's positions with PoSE's two-chunk skip (see module)."""
  positions_BxL = np.asarray(positions_BxL, np.int32)
  segment_ids_BxL = np.asarray(segment_ids_BxL)
  check(target_length >= positions_BxL.shape[-1], "PoSE target_length",
        f">= the row length {positions_BxL.shape[-1]}", target_length)
  out_BxL = positions_BxL.copy()
  for row in range(positions_BxL.shape[0]):
    segments = segment_ids_BxL[row]
    starts = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], segments.shape[0]]):
      if segments[start] == 0:  # padding
        continue
      span = positions_BxL[row, start:end]
      if np.any(span != span[0] + np.arange(end - start)):
        raise DataError(f"PoSE needs consecutive positions within a segment; row {row} has {span.tolist()}")
      out_BxL[row, start:end] = span + skip_offsets(end - start, target_length - int(span[0]), rng)
  return out_BxL
