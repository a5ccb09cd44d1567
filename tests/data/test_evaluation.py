"""Long held-out documents and sliding windows."""

from __future__ import annotations

import numpy as np
import pytest

from rope_lab.data import (DataConfig, DataConfigError, DocumentError, long_documents,
                           sliding_windows)


def test_long_documents_come_from_the_held_out_split(kjv_data_dir):
  cfg = DataConfig(data_dir=kjv_data_dir)
  docs = long_documents(cfg, "validation", min_tokens=50_000, max_tokens=60_000)
  assert len(docs) >= 4
  assert all(len(d.tokens) == 60_000 and d.tokens.dtype == np.int32 for d in docs)
  assert all(d.num_bytes == 60_000 for d in docs)  # Byte tokens.
  assert len(long_documents(cfg, "test", min_tokens=50_000, max_docs=2)) == 2


def test_held_out_and_training_documents_do_not_overlap(kjv_data_dir):
  cfg = DataConfig(data_dir=kjv_data_dir)
  ids = {split: {d.doc_id for d in long_documents(cfg, split, min_tokens=2)}
         for split in ("train", "validation", "test")}
  assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
  assert not ids["validation"] & ids["test"]
  assert sum(map(len, ids.values())) == 66


def test_documents_shorter_than_requested_are_a_clear_error(kjv_data_dir):
  cfg = DataConfig(data_dir=kjv_data_dir)
  with pytest.raises(DocumentError, match="min_tokens=10000000.*longest"):
    long_documents(cfg, "test", min_tokens=10_000_000)


@pytest.mark.parametrize("n, window, stride", [(100, 16, 16), (100, 16, 5), (17, 16, 8),
                                               (16, 16, 1), (2, 8, 8), (1000, 64, 48)])
def test_sliding_windows_score_every_target_once(n, window, stride):
  tokens = np.arange(n, dtype=np.int32) + 10
  windows = sliding_windows(tokens, window, stride, pad_id=-1)
  scored = []
  for k, (inputs, targets, mask) in enumerate(windows):
    assert inputs.shape == targets.shape == mask.shape == (window,)
    begin = k * stride
    real = inputs != -1
    assert np.array_equal(inputs[real], tokens[begin:begin + real.sum()])
    assert np.array_equal(targets[real], inputs[real] + 1)  # Next token.
    assert not np.any(mask[~real])
    for i in np.flatnonzero(mask):
      scored.append(int(targets[i]))
      context = i + 1  # Tokens this window conditions on for that target.
      assert context >= min(window - stride, int(targets[i]) - 10)
  assert sorted(scored) == list(tokens[1:])


def test_sliding_window_arguments_are_checked():
  with pytest.raises(DataConfigError, match="stride"):
    sliding_windows(np.arange(10), 4, 5)
  with pytest.raises(DataConfigError, match="window"):
    sliding_windows(np.arange(10), 0, 1)
  with pytest.raises(DocumentError, match="at least 2 tokens"):
    sliding_windows(np.arange(1), 4, 4)
