"""Short passkey and MQAR rows: checked by reading the text back, not through the generator."""

import re

import numpy as np
import pytest

from rope_lab.data import synthetic as sy
from rope_lab.data.errors import DataConfigError
from rope_lab.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


@pytest.mark.parametrize("length,depth", [(32, 0.0), (64, 0.5), (128, 1.0), (1000, 0.3)])
def test_short_passkey_has_the_length_and_its_answer_is_the_key_in_the_text(length, depth):
  example = sy.short_passkey_example(TOK, length, depth, seed=4)
  text = TOK.decode(example.tokens)
  assert len(example.tokens) == length
  (key,) = re.findall(r" key (\d{5})\.", text)
  assert TOK.decode(example.answer_ids) == f" {key}" == example.answer
  assert TOK.decode(example.tokens[example.needle_start:example.needle_end]) == f" key {key}."
  assert text[:example.answer_start].endswith(" key?")


def test_short_template_fits_well_inside_a_short_training_row():
  # Key, question and answer: " key 12345." + " key?" + " 12345" = 22 bytes.
  assert sy.short_passkey_example(TOK, 22, 0.5, seed=0).tokens.size == 22
  with pytest.raises(DataConfigError, match="too short"):
    sy.short_passkey_example(TOK, 21, 0.5, seed=0)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_mqar_answers_are_the_values_of_the_queried_keys_and_only_they_carry_loss(depth):
  row, example = sy.mqar_row(TOK, 160, pairs=8, queries=4, seed=7, depth=depth)
  text = TOK.decode(row.tokens)
  assert len(row.tokens) == len(row.answer_mask) == 160
  table = dict(re.findall(r" ([a-z]{2})=(\d)", text))
  assert len(table) == 8
  asked = re.findall(r" ([a-z]{2})\? (\d)", text)
  assert len(asked) == 4 and all(table[k] == v for k, v in asked)
  masked = TOK.decode(row.tokens[row.answer_mask > 0])
  assert masked == "".join(f" {v}" for _, v in asked)
  assert example.answer == f" {asked[-1][1]}" and TOK.decode(example.answer_ids) == example.answer
  needle = TOK.decode(example.tokens[example.needle_start:example.needle_end])
  assert needle == f" {asked[-1][0]}={asked[-1][1]}"


def test_training_rows_and_grid_are_deterministic_and_bad_tasks_are_named():
  a = sy.retrieval_training_row("mqar", TOK, 128, np.random.default_rng(0))
  b = sy.retrieval_training_row("mqar", TOK, 128, np.random.default_rng(0))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  p = sy.retrieval_training_row("short_passkey", TOK, 128, np.random.default_rng(1))
  assert p.answer_mask.sum() == 6 and p.tokens.size == 128  # " NNNNN"
  grid = sy.task_grid("short_passkey", TOK, [64, 256], [0.0, 1.0], samples=3)
  assert len(grid) == 12 and len({e.answer for e in grid}) > 1
  assert len(sy.task_grid("mqar", TOK, [128], [0.5], samples=2)) == 2
  with pytest.raises(DataConfigError, match="mqar"):
    sy.mqar_row(TOK, 128, pairs=2, queries=3, seed=0)
  with pytest.raises(DataConfigError, match="short_passkey"):
    sy.retrieval_training_row("lines", TOK, 128, np.random.default_rng(0))


def test_the_retrieval_mix_replaces_rows_with_loss_on_the_answers_only():
  from rope_lab.evaluate.retrieval_data import RetrievalMixIterator  # pylint: disable=g-import-not-at-top

  class Rows:
    def __init__(self):
      self.n = 0

    def __next__(self):
      self.n += 1
      return {"inputs": np.full((8, 64), 65, np.int32), "targets": np.full((8, 64), 65, np.int32),
              "positions": np.tile(np.arange(64), (8, 1)), "segment_ids": np.ones((8, 64), np.int32),
              "loss_mask": np.ones((8, 64), np.float32)}

  mixed = [next(RetrievalMixIterator(Rows(), TOK, seq_len=64, fraction=0.5, seed=s)) for s in (0, 0, 1)]
  np.testing.assert_array_equal(mixed[0]["inputs"], mixed[1]["inputs"])  # a function of the seed
  replaced = np.flatnonzero((mixed[0]["inputs"] != 65).any(axis=1))
  assert 0 < replaced.size < 8
  for row in replaced:
    text = TOK.decode(mixed[0]["inputs"][row])
    scored = TOK.decode(mixed[0]["targets"][row][mixed[0]["loss_mask"][row] > 0])
    np.testing.assert_array_equal(mixed[0]["inputs"][row][1:], mixed[0]["targets"][row][:-1])
    if "=" in text:  # MQAR: the scored tokens are the values after the queries
      values = re.findall(r" [a-z]{2}\? (\d)", TOK.decode(mixed[0]["targets"][row]))
      assert scored == "".join(f" {v}" for v in values)
    else:
      (key,) = re.findall(r" key (\d{5})\.", text)
      assert scored == f" {key}"


def _text_rows(rows=8, length=256):
  class Rows:
    def __next__(self):
      return {"inputs": np.full((rows, length), 65, np.int32), "targets": np.full((rows, length), 65, np.int32),
              "positions": np.tile(np.arange(length), (rows, 1)), "segment_ids": np.ones((rows, length), np.int32),
              "loss_mask": np.ones((rows, length), np.float32)}
  return Rows()


def test_packed_retrieval_rows_hold_whole_examples_of_the_drawn_lengths_each_from_position_0():
  from rope_lab.evaluate.retrieval_data import RetrievalMixIterator  # pylint: disable=g-import-not-at-top
  mixed = RetrievalMixIterator(_text_rows(), TOK, seq_len=256, fraction=1.0, seed=3, example_lengths=(70, 129))
  batch = next(mixed)
  lengths = []
  for row in range(8):
    segments = batch["segment_ids"][row]
    assert segments[0] == 1 and np.all(np.diff(segments[segments > 0]) >= 0)
    for segment in np.unique(segments[segments > 0]):
      span = np.flatnonzero(segments == segment)
      assert np.all(np.diff(span) == 1)
      lengths.append(span.size + 1)  # an example of n tokens fills n - 1 input positions
      np.testing.assert_array_equal(batch["positions"][row, span], np.arange(span.size))
      inputs, targets = batch["inputs"][row, span], batch["targets"][row, span]
      np.testing.assert_array_equal(inputs[1:], targets[:-1])
      text = TOK.decode(np.append(inputs, targets[-1]))
      scored = TOK.decode(targets[batch["loss_mask"][row, span] > 0])
      if "=" in text:
        assert scored == "".join(f" {v}" for v in re.findall(r" [a-z]{2}\? (\d)", text))
      else:
        (key,) = re.findall(r" key (\d{5})\.", text)
        assert scored == f" {key}" and text.endswith(f" key? {key}")
    tail = segments == 0  # less room than the shortest example is left unused, without loss
    assert tail.sum() < 70 - 1 and not batch["loss_mask"][row, tail].any()
  assert min(lengths) >= 70 and max(lengths) <= 129 and len(set(lengths)) > 5


def test_retrieval_example_lengths_are_checked():
  from rope_lab.evaluate.retrieval_data import RetrievalMixIterator  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="example_lengths"):
    RetrievalMixIterator(_text_rows(), TOK, seq_len=256, fraction=1.0, seed=0, example_lengths=(130, 129))
