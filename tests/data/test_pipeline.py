"""make_train_iterator: the batch contract, determinism, exact resume and sharding."""

from __future__ import annotations

import collections
import itertools
import json

import numpy as np
import pytest

from rope_lab.data import (BATCH_KEYS, DataConfig, DataConfigError, DatasetNotPreparedError,
                           make_train_iterator)

RANDOM = DataConfig(dataset="random:16")
SEQ = 32


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def row_keys(batch):
  """One hashable key per row (random documents make rows distinct)."""
  return [batch["inputs"][r].tobytes() + batch["segment_ids"][r].tobytes()
          for r in range(batch["inputs"].shape[0])]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for key in BATCH_KEYS:
      np.testing.assert_array_equal(x[key], y[key])


def test_batch_contract():
  batch = next(make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=8, seed=0))
  assert set(batch) == set(BATCH_KEYS)
  for key in BATCH_KEYS:
    assert batch[key].shape == (8, SEQ)
    assert batch[key].dtype == (np.float32 if key == "loss_mask" else np.int32)
  same_segment = (batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]) & (
      batch["segment_ids"][:, 1:] > 0)
  # Within a segment, each target is the next input.
  assert np.array_equal(batch["targets"][:, :-1][same_segment],
                        batch["inputs"][:, 1:][same_segment])
  assert np.array_equal(batch["loss_mask"] > 0, batch["segment_ids"] > 0)


def test_deterministic_given_seed():
  a = take(make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=4, seed=7), 5)
  b = take(make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=4, seed=7), 5)
  c = take(make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=4, seed=8), 5)
  assert_batches_equal(a, b)
  assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


@pytest.mark.parametrize("packing", ["pack", "concat"])
def test_resume_is_exact_across_epochs(packing):
  cfg = DataConfig(dataset="random:4", packing=packing)
  iterator = make_train_iterator(cfg, seq_len=64, global_batch_size=4, seed=1)
  per_epoch = iterator.batches_per_epoch
  take(iterator, per_epoch - 2)  # Stop just before an epoch boundary.
  state = iterator.get_state()
  expected = take(iterator, 5)
  restored = make_train_iterator(cfg, seq_len=64, global_batch_size=4, seed=1)
  restored.set_state(json.dumps(state).encode())  # Survives JSON text or bytes.
  assert_batches_equal(take(restored, 5), expected)


def test_resume_refuses_a_different_pipeline():
  state = make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=4, seed=0).get_state()
  other = make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=4, seed=5)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(state)


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_split_the_global_batch(process_count):
  global_batch = 8
  single = take(make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=global_batch,
                                    seed=2), 6)
  shards = [take(make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=global_batch, seed=2,
                                     process_index=p, process_count=process_count), 6)
            for p in range(process_count)]
  for step in range(6):
    union = collections.Counter()
    for p in range(process_count):
      assert shards[p][step]["inputs"].shape == (global_batch // process_count, SEQ)
      union.update(row_keys(shards[p][step]))
    assert union == collections.Counter(row_keys(single[step]))


def test_sharded_epoch_covers_every_row_once():
  cfg = DataConfig(dataset="random:8", num_epochs=1)
  seen = collections.Counter()
  for p in range(3):
    iterator = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=6, seed=0,
                                   process_index=p, process_count=3)
    for batch in iterator:
      seen.update(row_keys(batch))
  rows = iterator.rows_per_epoch
  assert max(seen.values()) == 1
  assert sum(seen.values()) == rows - rows % 6  # Only the last partial global batch is dropped.


def test_each_epoch_is_reshuffled():
  cfg = DataConfig(dataset="random:4")
  iterator = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=1, seed=0)
  n = iterator.rows_per_epoch
  first, second = (row_keys(b)[0] for b in take(iterator, n)), None
  first = list(first)
  second = [row_keys(b)[0] for b in take(iterator, n)]
  assert sorted(first) == sorted(second) and first != second


def test_default_config_trains_on_prepared_kjv(kjv_data_dir):
  iterator = make_train_iterator(DataConfig(data_dir=kjv_data_dir), seq_len=256,
                                 global_batch_size=4, seed=0)
  batch = next(iterator)
  text = iterator.tokenizer.decode(batch["inputs"][0])
  assert batch["inputs"].shape == (4, 256) and iterator.tokenizer.vocab_size == 258
  assert any(word in text for word in ("the", "and", "LORD", "of"))
  assert iterator.rows_per_epoch > 10_000  # About 2.8M training bytes / 256.


def test_in_context_ordering_end_to_end(topic_corpus):
  data_dir, dataset = topic_corpus
  cfg = DataConfig(dataset=dataset, data_dir=data_dir, ordering="in_context", packing="concat")
  batch = next(make_train_iterator(cfg, seq_len=64, global_batch_size=2, seed=0))
  assert np.all(batch["segment_ids"] == 1) and batch["inputs"].shape == (2, 64)


def test_arguments_are_validated():
  with pytest.raises(DataConfigError, match="global_batch_size"):
    make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=6, seed=0, process_count=4)
  with pytest.raises(DataConfigError, match="process_index"):
    make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=4, seed=0, process_index=2,
                        process_count=2)
  with pytest.raises(DataConfigError, match="seq_len"):
    make_train_iterator(RANDOM, seq_len=0, global_batch_size=4, seed=0)


def test_unprepared_dataset_without_auto_prepare(tmp_path):
  cfg = DataConfig(data_dir=str(tmp_path), auto_prepare=False)
  with pytest.raises(DatasetNotPreparedError, match="experiments.prepare_data --dataset=kjv"):
    make_train_iterator(cfg, seq_len=SEQ, global_batch_size=4, seed=0)


def test_resume_with_a_different_process_count():
  single = make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=4, seed=3)
  take(single, 3)
  state = single.get_state()
  expected = collections.Counter(row_keys(next(single)))
  union = collections.Counter()
  for p in range(2):
    shard = make_train_iterator(RANDOM, seq_len=SEQ, global_batch_size=4, seed=3,
                                process_index=p, process_count=2)
    shard.set_state(state)
    union.update(row_keys(next(shard)))
  assert union == expected
