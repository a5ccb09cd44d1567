"""Row plans: positions, segment ids, loss masks and coverage of every transition."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from rope_lab.data import BATCH_KEYS, DataConfigError
from rope_lab.data.packing import ConcatPlan, PackPlan, best_fit_decreasing
from rope_lab.data.store import TokenStore

EOD, PAD = 1_000_000, 1_000_001


def make_store(lengths) -> TokenStore:
  """Document d holds tokens d*10000 + i, so every transition is unique and traceable."""
  docs = [np.append(d * 10_000 + np.arange(n), EOD) for d, n in enumerate(lengths)]
  offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
  return TokenStore(tokens=np.concatenate(docs).astype(np.int32), offsets=offsets,
                    doc_ids=tuple(f"d{i}" for i in range(len(lengths))), eod_id=EOD)


def document_transitions(store):
  pairs = collections.Counter()
  for d in range(store.num_docs):
    doc = store.tokens[store.offsets[d]:store.offsets[d + 1]]
    pairs.update(zip(doc[:-1].tolist(), doc[1:].tolist()))
  return pairs


def scored_transitions(batch):
  mask = batch["loss_mask"] > 0
  return collections.Counter(zip(batch["inputs"][mask].tolist(), batch["targets"][mask].tolist()))


LENGTHS = [1, 3, 7, 8, 9, 16, 17, 30, 2, 5, 41]


@pytest.mark.parametrize("seq_len", [4, 8, 13])
def test_pack_plan_scores_every_transition_exactly_once(seq_len):
  store = make_store(LENGTHS)
  plan = PackPlan(store, seq_len, seed=3, pad_id=PAD)
  batch = plan.assemble(np.arange(plan.num_rows))
  assert scored_transitions(batch) == document_transitions(store)
  assert all(batch[k].shape == (plan.num_rows, seq_len) for k in BATCH_KEYS)


def test_pack_plan_positions_and_segments():
  store = make_store(LENGTHS)
  seq_len = 8
  plan = PackPlan(store, seq_len, seed=0, pad_id=PAD)
  batch = plan.assemble(np.arange(plan.num_rows))
  assert batch["inputs"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
  for row in range(plan.num_rows):
    seg, pos, inputs = batch["segment_ids"][row], batch["positions"][row], batch["inputs"][row]
    real = seg > 0
    # Segments are 1, 2, 3, ... in order; padding (segment 0) only at the end.
    assert np.array_equal(real, np.arange(seq_len) < real.sum())
    assert np.array_equal(np.unique(seg[real]), np.arange(1, seg.max() + 1))
    assert np.all(np.diff(seg[real]) >= 0)
    assert np.array_equal(batch["loss_mask"][row] > 0, real)
    assert np.all(batch["inputs"][row][~real] == PAD) and np.all(pos[~real] == 0)
    for s in range(1, seg.max() + 1):
      piece = seg == s
      assert np.array_equal(pos[piece], np.arange(piece.sum()))  # Restart at 0.
      assert np.all(np.diff(inputs[piece]) == 1)  # Consecutive tokens of one document.
      assert len({int(t) // 10_000 for t in inputs[piece]}) == 1
  # Long documents become full single-segment rows, continuing across rows.
  assert plan.num_full_rows == sum(n // seq_len for n in LENGTHS)


def test_pack_plan_continues_long_documents_across_rows():
  store = make_store([20])
  plan = PackPlan(store, 8, seed=0, pad_id=PAD)
  batch = plan.assemble(np.arange(plan.num_rows))
  assert plan.num_rows == 3
  assert batch["inputs"][1, 0] == batch["targets"][0, -1]  # Overlap of one token.
  assert batch["targets"][2, 3] == EOD and batch["loss_mask"][2].sum() == 4


def test_concat_plan_follows_the_order():
  store = make_store(LENGTHS)
  order = np.random.default_rng(0).permutation(store.num_docs)
  seq_len = 6
  plan = ConcatPlan(store, seq_len, order, pad_id=PAD)
  stream = np.concatenate([store.tokens[store.offsets[d]:store.offsets[d + 1]] for d in order])
  batch = plan.assemble(np.arange(plan.num_rows))
  assert plan.num_rows == (len(stream) - 1) // seq_len
  for row in range(plan.num_rows):
    assert np.array_equal(batch["inputs"][row], stream[row * seq_len:(row + 1) * seq_len])
    assert np.array_equal(batch["targets"][row], stream[row * seq_len + 1:(row + 1) * seq_len + 1])
  assert np.all(batch["segment_ids"] == 1) and np.all(batch["loss_mask"] == 1.0)
  assert np.array_equal(batch["positions"][3], np.arange(seq_len))


def test_concat_plan_rejects_bad_order_and_too_long_rows():
  store = make_store([3, 4])
  with pytest.raises(ValueError, match="permutation"):
    ConcatPlan(store, 2, np.array([0, 0]), pad_id=PAD)
  with pytest.raises(DataConfigError, match="seq_len=100"):
    ConcatPlan(store, 100, np.array([1, 0]), pad_id=PAD)


def test_best_fit_decreasing_respects_capacity():
  sizes = np.array([5, 3, 7, 1, 2, 8, 4, 4, 6])
  bins = best_fit_decreasing(sizes, 10, np.arange(len(sizes)))
  assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
  assert all(sizes[b].sum() <= 10 for b in bins)
  assert len(bins) == int(np.ceil(sizes.sum() / 10))
