r"""Throughput of the training input pipeline, in tokens per second.

  python -m benchmarks.input_pipeline                     # kjv, byte tokens, seq 256, batch 16
  python -m benchmarks.input_pipeline --packing=concat --ordering=in_context

Builds the iterator exactly as training does (preparing the dataset first if
needed, which is timed separately), pulls --warmup batches, then times
--num_batches batches and prints the rate. Repeats --repeats times and
reports the best and median rates.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

from rope_lab.data import DataConfig, make_train_iterator, prepare

_DATASET = flags.DEFINE_string("dataset", "kjv", "DataConfig.dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "DataConfig.data_dir.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "byte", "DataConfig.tokenizer.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", None, "DataConfig.vocab_size.")
_PACKING = flags.DEFINE_enum("packing", "pack", ["pack", "concat"], "DataConfig.packing.")
_ORDERING = flags.DEFINE_enum("ordering", "random", ["random", "in_context"],
                              "DataConfig.ordering.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per row.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Rows per batch.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 2000, "Timed batches per repeat.")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed batches before timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats.")
_THREADS = flags.DEFINE_integer("prefetch_threads", 0, "grain read-ahead threads.")


def main(argv):
  del argv
  cfg = DataConfig(dataset=_DATASET.value, data_dir=_DATA_DIR.value, tokenizer=_TOKENIZER.value,
                   vocab_size=_VOCAB_SIZE.value, packing=_PACKING.value, ordering=_ORDERING.value)
  start = time.perf_counter()
  prepare(cfg, splits=(cfg.train_split,))
  print(f"prepare (no-op when cached): {time.perf_counter() - start:.2f}s")
  start = time.perf_counter()
  iterator = make_train_iterator(cfg, seq_len=_SEQ_LEN.value, global_batch_size=_BATCH_SIZE.value,
                                 seed=0, prefetch_threads=_THREADS.value)
  print(f"iterator construction: {time.perf_counter() - start:.2f}s "
        f"({iterator.rows_per_epoch:,d} rows per epoch)")
  for _ in range(_WARMUP.value):
    next(iterator)
  tokens_per_batch = _SEQ_LEN.value * _BATCH_SIZE.value
  rates = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
      next(iterator)
    rates.append(_NUM_BATCHES.value * tokens_per_batch / (time.perf_counter() - start))
  print(f"dataset={cfg.dataset} tokenizer={cfg.tokenizer} packing={cfg.packing} "
        f"ordering={cfg.ordering} seq_len={_SEQ_LEN.value} batch={_BATCH_SIZE.value}")
  print(f"tokens/s: best {max(rates):,.0f}  median {statistics.median(rates):,.0f}")


if __name__ == "__main__":
  app.run(main)
