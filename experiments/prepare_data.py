r"""Prepares datasets, tokenizers and token caches offline.

  python -m experiments.prepare_data                       # kjv and pystdlib, byte tokens
  python -m experiments.prepare_data --dataset=kjv --tokenizer=bpe --vocab_size=4096
  python -m experiments.prepare_data --dataset=tfds:pg19 --data_dir=/data/tfds

``--dataset=default`` prepares both embedded corpora (``kjv``, the default
training set, and ``pystdlib``). Everything else takes any dataset name that
DataConfig accepts. Prints split sizes and the time taken.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from rope_lab.running import cli
from rope_lab.data import DataConfig, prepare, resolve_data_dir

_DATASET = flags.DEFINE_string(
    "dataset", "default", "'default' (= kjv and pystdlib) or any DataConfig.dataset name.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Data directory (created if missing); default $ROPE_LAB_DATA_DIR or "
    "~/.cache/rope_lab/data.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", "byte", "'byte', 'bpe', 'unigram' or a SentencePiece .model path.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", None, "Vocabulary size for bpe/unigram.")
_ORDERING = flags.DEFINE_enum(
    "ordering", "random", ["random", "in_context"],
    "'in_context' also computes the In-Context Pretraining document order.")

DEFAULT_DATASETS = ("kjv", "pystdlib")


def main(argv):
  del argv
  data_dir = cli.absolute_path(_DATA_DIR.value)
  if data_dir is not None:
    os.makedirs(data_dir, exist_ok=True)
  tokenizer = _TOKENIZER.value
  if tokenizer.endswith(".model"):
    tokenizer = cli.absolute_path(tokenizer)
  datasets = DEFAULT_DATASETS if _DATASET.value == "default" else (_DATASET.value,)
  start = time.perf_counter()
  for dataset in datasets:
    dataset_start = time.perf_counter()
    cfg = DataConfig(dataset=dataset, data_dir=data_dir, tokenizer=tokenizer,
                     vocab_size=_VOCAB_SIZE.value, ordering=_ORDERING.value,
                     packing="concat" if _ORDERING.value == "in_context" else "pack")
    summaries = prepare(cfg)
    print(f"{dataset} ({cfg.tokenizer} tokens) in {resolve_data_dir(data_dir)}: "
          f"{time.perf_counter() - dataset_start:.1f}s")
    for s in summaries:
      longs = ", ".join(f">={n}: {c}" for n, c in s.long_docs.items())
      print(f"  {s.split:<10} {s.num_docs:5d} docs {s.num_tokens:11,d} tokens, "
            f"longest {s.longest_tokens:,d}; docs {longs}")
  print(f"total {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
  cli.run(main)
