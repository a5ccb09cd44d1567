"""Prepare everything a DataConfig needs ahead of time (what experiments/prepare_data runs).

Training and evaluation prepare lazily too; doing it up front makes the cost
visible, and is how a shared data directory gets filled once for many runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rope_lab.data import sources
from rope_lab.data.config import DataConfig, resolve_data_dir
from rope_lab.data.errors import DocumentError
from rope_lab.data.pipeline import document_order
from rope_lab.data.splits import SPLITS
from rope_lab.data.store import get_tokenizer, load_token_store, store_dir

LONG_DOCUMENT_TOKENS = (4096, 16384)


@dataclasses.dataclass(frozen=True)
class SplitSummary:
  """What a prepared split holds."""
  split: str
  num_docs: int
  num_tokens: int
  longest_tokens: int
  # Documents with at least N tokens, for each N in LONG_DOCUMENT_TOKENS.
  long_docs: dict[int, int]


def prepare(cfg: DataConfig, splits: tuple[str, ...] = SPLITS) -> list[SplitSummary]:
  """Prepares the dataset, tokenizer, token stores (and in-context order) of ``cfg``.

  Splits a catalog dataset does not have are skipped.
  """
  tokenizer = get_tokenizer(cfg)
  summaries = []
  for split in splits:
    try:
      store = load_token_store(cfg, split, tokenizer)
    except DocumentError as e:
      if split == cfg.train_split or "has no split" not in str(e):
        raise
      continue
    lengths = store.lengths() - 1
    summaries.append(SplitSummary(
        split=split, num_docs=store.num_docs, num_tokens=int(lengths.sum()),
        longest_tokens=int(lengths.max()),
        long_docs={n: int(np.count_nonzero(lengths >= n)) for n in LONG_DOCUMENT_TOKENS}))
    if split == cfg.train_split and cfg.ordering == "in_context":
      spec = sources.parse_dataset_name(cfg.dataset)
      cache = None if spec.kind == "random" else store_dir(
          cfg, split, tokenizer, resolve_data_dir(cfg.data_dir))
      document_order(cfg, store, tokenizer, seed=0, cache_dir=cache)
  return summaries
