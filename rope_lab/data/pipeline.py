"""The training input pipeline: ``make_train_iterator``.

grain pipeline over row ids (no worker processes; a batch is a few vectorised
slices of a memory-mapped token array, far faster than the model consumes):

  range(rows) -> shuffle(seed, reshuffled every epoch) -> repeat(num_epochs)
    -> [process_index::process_count] -> batch(global // count) -> assemble

Sharding takes every ``process_count``-th row of one global stream, so the
union of all processes' step-``s`` batches is exactly the global batch a
single process would read at step ``s`` (and a resumed run may even change
its number of processes). Each process only reads the tokens of its rows.
With a finite ``num_epochs`` the stream is cut to whole global batches, so
every process stops after the same step.
"""

from __future__ import annotations

import hashlib
import json

import grain
import numpy as np

from rope_lab.data import ordering, sources
from rope_lab.data.config import DataConfig, resolve_data_dir
from rope_lab.data.errors import DataConfigError
from rope_lab.errors import check
from rope_lab.data.packing import ConcatPlan, PackPlan
from rope_lab.data.store import TokenStore, get_tokenizer, load_token_store, store_dir
from rope_lab.data.tokenizers import Tokenizer

STATE_FORMAT = 1


def document_order(cfg: DataConfig, store: TokenStore, tokenizer: Tokenizer, seed: int,
                   cache_dir: str | None) -> np.ndarray:
  """The order documents are concatenated in (``packing='concat'``)."""
  if cfg.ordering == "in_context":
    texts_fn = lambda: [tokenizer.decode(store.document(i)) for i in range(store.num_docs)]
    return ordering.cached_in_context_order(cache_dir, texts_fn, store.num_docs,
                                            cfg.icp_neighbours)
  return np.random.default_rng(seed).permutation(store.num_docs)


def build_row_plan(cfg: DataConfig, store: TokenStore, tokenizer: Tokenizer, seq_len: int,
                   seed: int, cache_dir: str | None = None) -> PackPlan | ConcatPlan:
  if cfg.packing == "pack":
    return PackPlan(store, seq_len, seed, tokenizer.pad_id)
  order = document_order(cfg, store, tokenizer, seed, cache_dir)
  return ConcatPlan(store, seq_len, order, tokenizer.pad_id)


class TrainIterator:
  """Yields this process's batches; ``get_state``/``set_state`` give exact resumption.

  Attributes:
    tokenizer: the tokenizer the batches were made with (save it with
      ``save_tokenizer_spec``).
    rows_per_epoch: training rows in one pass over the split (all processes).
    batches_per_epoch: global batches in one epoch (rounded down).
  """

  def __init__(self, grain_iterator, fingerprint: dict, tokenizer: Tokenizer,
               rows_per_epoch: int, global_batch_size: int):
    self._iterator = grain_iterator
    self._fingerprint = fingerprint
    self.tokenizer = tokenizer
    self.rows_per_epoch = rows_per_epoch
    self.batches_per_epoch = rows_per_epoch // global_batch_size

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def get_state(self) -> dict:
    """A JSON-serialisable snapshot; pass it to ``set_state`` to continue from here."""
    return {"format": STATE_FORMAT, "fingerprint": self._fingerprint,
            "grain": self._iterator.get_state()}

  def set_state(self, state: dict | str | bytes) -> None:
    """Restores a state from ``get_state`` (a dict, or its JSON text or bytes)."""
    if isinstance(state, (str, bytes)):
      state = json.loads(state)
    if state.get("format") != STATE_FORMAT:
      raise ValueError(f"unknown iterator state format {state.get('format')!r}")
    saved = state["fingerprint"]
    if saved != self._fingerprint:
      changed = sorted(k for k in set(saved) | set(self._fingerprint)
                       if saved.get(k) != self._fingerprint.get(k))
      raise ValueError(f"iterator state was saved by a different data pipeline; changed: "
                       + ", ".join(f"{k} ({saved.get(k)!r} -> {self._fingerprint.get(k)!r})"
                                   for k in changed))
    self._iterator.set_state(state["grain"])


def make_train_iterator(cfg: DataConfig, *, seq_len: int, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        prefetch_threads: int = 0, split: str | None = None) -> TrainIterator:
  """The training batches of ``cfg`` for this process.

  Args:
    cfg: what data, tokenizer, ordering and packing to use.
    seq_len: tokens per row.
    global_batch_size: rows per step over all processes; a multiple of
      ``process_count``.
    seed: fixes the shuffle, the document order and the packing.
    process_index: this process, in [0, process_count).
    process_count: processes that read data (one per host).
    prefetch_threads: grain read-ahead threads; 0 reads on demand, which is
      already far faster than the model trains (see docs/data.md).
    split: the split the rows come from (None: ``cfg.train_split``). The tokenizer is
      always ``cfg``'s, trained on ``cfg.train_split``: held-out batches must be
      tokenized exactly as the training rows were.

  Returns:
    An iterator of dicts with int32 ``inputs``, ``targets``, ``positions``,
    ``segment_ids`` and float32 ``loss_mask``, each ``[global_batch_size //
    process_count, seq_len]``.
  """
  check(isinstance(seq_len, int) and seq_len >= 1, "make_train_iterator: seq_len", "a positive int", seq_len,
        DataConfigError)
  check(isinstance(process_count, int) and process_count >= 1, "make_train_iterator: process_count",
        "a positive int", process_count, DataConfigError)
  check(isinstance(process_index, int) and 0 <= process_index < process_count,
        "make_train_iterator: process_index", f"in [0, {process_count})", process_index, DataConfigError)
  check(isinstance(global_batch_size, int) and global_batch_size >= process_count
        and global_batch_size % process_count == 0, "make_train_iterator: global_batch_size",
        f"a positive multiple of process_count={process_count}", global_batch_size, DataConfigError)
  check(isinstance(seed, int) and seed >= 0, "make_train_iterator: seed", "a non-negative int", seed, DataConfigError)
  split = cfg.train_split if split is None else split
  check(isinstance(split, str) and split != "", "make_train_iterator: split", "a split name", split,
        DataConfigError)
  tokenizer = get_tokenizer(cfg)
  store = load_token_store(cfg, split, tokenizer)
  cache_dir = None
  if sources.parse_dataset_name(cfg.dataset).kind != "random":
    cache_dir = store_dir(cfg, split, tokenizer, resolve_data_dir(cfg.data_dir))
  plan = build_row_plan(cfg, store, tokenizer, seq_len, seed, cache_dir)

  dataset = grain.MapDataset.range(plan.num_rows)
  if cfg.shuffle:
    dataset = dataset.shuffle(seed=seed % 2**32)
  dataset = dataset.repeat(cfg.num_epochs)
  if cfg.num_epochs is not None:
    # Whole global batches only, so every process stops after the same step.
    dataset = dataset[:len(dataset) - len(dataset) % global_batch_size]
  dataset = dataset[process_index::process_count]
  dataset = dataset.batch(global_batch_size // process_count, drop_remainder=True)
  dataset = dataset.map(plan.assemble)
  read_options = grain.ReadOptions(num_threads=prefetch_threads,
                                   prefetch_buffer_size=max(2 * prefetch_threads, 1))
  iterator = iter(dataset.to_iter_dataset(read_options))

  fingerprint = {
      "dataset": cfg.dataset, "train_split": split, "tokenizer": tokenizer.cache_key,
      "ordering": cfg.ordering, "packing": cfg.packing, "shuffle": cfg.shuffle,
      "num_epochs": cfg.num_epochs, "seq_len": seq_len, "global_batch_size": global_batch_size,
      "seed": seed, "rows_per_epoch": plan.num_rows,
      "documents": hashlib.sha256("\n".join(store.doc_ids).encode()).hexdigest()[:16],
  }
  return TrainIterator(iterator, fingerprint, tokenizer, plan.num_rows, global_batch_size)
