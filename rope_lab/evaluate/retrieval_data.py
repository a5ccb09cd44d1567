"""Training rows that teach a tiny model the passkey format, mixed into the corpus rows.

A few-hundred-step byte-level model trained on the Bible alone never learns to copy a
five-digit key it saw a hundred tokens earlier, so its passkey accuracy is zero at every
length, the training length included, and a passkey heatmap would measure nothing about
position encodings. The study's retrieval probe model therefore replaces a fraction of
its training rows with passkey examples of exactly the training length (the data
module's ``passkey_example``: same template as the evaluation, other keys, filler
lengths and depths). Whether the skill survives at longer contexts under each encoding
is then what the heatmap shows.

The mix is a function of (seed, batch number, row): resuming from a checkpoint replays
exactly the same rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rope_lab.data import passkey_example
from rope_lab.data.synthetic import retrieval_training_row

# Keys of the seeds of training examples never equal evaluation seeds (task_grid uses
# seed * 1_000_003 + sample with small seeds).
_TRAIN_SEED_OFFSET = 10**9


class PasskeyMixIterator:
  """Wraps a training iterator; replaces each row with probability ``fraction``."""

  def __init__(self, inner, tokenizer, *, seq_len: int, fraction: float, seed: int):
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f"passkey mix fraction must be in [0, 1], got {fraction}")
    self._inner, self._tok = inner, tokenizer
    self._seq_len, self._fraction, self._seed = seq_len, fraction, seed
    self._batches = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = {k: np.array(v) for k, v in next(self._inner).items()}
    rng = np.random.default_rng([self._seed, self._batches, 7])
    self._batches += 1
    for row in np.flatnonzero(rng.random(len(batch["inputs"])) < self._fraction):
      depth = float(rng.random())
      example = passkey_example(self._tok, self._seq_len + 1, depth,
                                _TRAIN_SEED_OFFSET + int(rng.integers(1 << 30)))
      tokens = example.tokens
      batch["inputs"][row] = tokens[:-1]
      batch["targets"][row] = tokens[1:]
      batch["positions"][row] = np.arange(self._seq_len)
      batch["segment_ids"][row] = 1
      batch["loss_mask"][row] = 1.0
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"inner": self._inner.get_state(), "batches": self._batches}

  def set_state(self, state: dict[str, Any]) -> None:
    self._inner.set_state(state["inner"])
    self._batches = int(state["batches"])


def passkey_mix_source(base_source, tokenizer, *, fraction: float, train_split: str, seed: int):
  """A ``train.run`` data source: ``base_source`` with passkey rows mixed into the training split."""
  def make(split: str, **kwargs):
    iterator = base_source(split, **kwargs)
    if split != train_split or fraction == 0.0:
      return iterator
    return PasskeyMixIterator(iterator, tokenizer, seq_len=kwargs["seq_len"], fraction=fraction,
                              seed=seed)
  return make


class RetrievalMixIterator(PasskeyMixIterator):
  """Like :class:`PasskeyMixIterator`, with the short tasks a tiny model can learn in pretraining
  (``tasks``: 'short_passkey', 'mqar'; one drawn per example) and the loss on their answers
  only (the data module's ``retrieval_training_row``).

  ``example_lengths=(shortest, longest)`` packs each replaced row with examples whose lengths
  are drawn uniformly from that range, each its own segment with positions from 0 (the row's
  unused tail is padding, segment 0, no loss). Examples of exactly the row's length teach the
  answer at one position only: a model trained that way retrieved 69% of the keys at its
  training length and 13% at a quarter of it. ``None``: one example filling each replaced row.
  """

  def __init__(self, inner, tokenizer, *, seq_len: int, fraction: float, seed: int,
               tasks: tuple[str, ...] = ("short_passkey", "mqar"),
               example_lengths: tuple[int, int] | None = None):
    super().__init__(inner, tokenizer, seq_len=seq_len, fraction=fraction, seed=seed)
    if not tasks:
      raise ValueError("retrieval mix: tasks must name at least one task")
    if example_lengths is not None and not 2 <= example_lengths[0] <= example_lengths[1]:
      raise ValueError(f"retrieval mix: example_lengths must be (shortest, longest) with "
                       f"2 <= shortest <= longest, got {example_lengths}")
    self._tasks = tuple(tasks)
    self._lengths = example_lengths

  def _row_lengths(self, rng: np.random.Generator) -> list[int]:
    """Token counts (inputs + 1) of the examples packed into one row of ``seq_len`` inputs."""
    if self._lengths is None:
      return [self._seq_len + 1]
    shortest, longest = self._lengths
    lengths, room = [], self._seq_len  # each example of n tokens takes n - 1 input positions
    while room + 1 >= shortest:
      n = int(rng.integers(shortest, min(longest, room + 1) + 1))
      lengths.append(n)
      room -= n - 1
    return lengths

  def __next__(self) -> dict[str, np.ndarray]:
    batch = {k: np.array(v) for k, v in next(self._inner).items()}
    rng = np.random.default_rng([self._seed, self._batches, 11])
    self._batches += 1
    for row in np.flatnonzero(rng.random(len(batch["inputs"])) < self._fraction):
      for key in ("inputs", "targets", "segment_ids", "loss_mask", "positions"):
        batch[key][row] = 0
      start = 0
      for segment, length in enumerate(self._row_lengths(rng), start=1):
        task = self._tasks[int(rng.integers(len(self._tasks)))]
        example = retrieval_training_row(task, self._tok, length,
                                         np.random.default_rng([_TRAIN_SEED_OFFSET, self._seed, int(rng.integers(1 << 30))]))
        span = slice(start, start + length - 1)
        batch["inputs"][row, span] = example.tokens[:-1]
        batch["targets"][row, span] = example.tokens[1:]
        batch["positions"][row, span] = np.arange(length - 1)
        batch["segment_ids"][row, span] = segment
        batch["loss_mask"][row, span] = example.answer_mask[1:]
        start += length - 1
    return batch

