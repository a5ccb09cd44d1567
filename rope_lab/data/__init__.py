"""Data for rope_lab: corpora, tokenizers, training batches and evaluation inputs.

Entry points:

* ``DataConfig`` and ``make_train_iterator(cfg, seq_len=..., global_batch_size=...,
  seed=..., process_index=..., process_count=...)`` for training batches;
* ``get_tokenizer(cfg)``, ``save_tokenizer_spec(workdir, tok)``,
  ``load_tokenizer_spec(workdir)``;
* ``long_documents`` and ``sliding_windows`` for long-document perplexity;
* ``passkey_example``, ``lines_example``, ``task_grid``,
  ``answer_log_likelihood`` and ``greedy_exact_match`` for synthetic retrieval;
* ``prepare(cfg)`` to prepare everything a config needs ahead of time.

See docs/data.md.
"""

from rope_lab.data.config import DATA_DIR_ENV, DataConfig, default_data_dir, resolve_data_dir
from rope_lab.data.errors import (DataConfigError, DatasetNotPreparedError, DocumentError,
                                  UnknownDatasetError)
from rope_lab.data.evaluation import LongDocument, Window, long_documents, sliding_windows
from rope_lab.data.packing import BATCH_KEYS
from rope_lab.data.pipeline import TrainIterator, make_train_iterator
from rope_lab.data.prepare import prepare
from rope_lab.data.store import TokenStore, get_tokenizer, load_token_store
from rope_lab.data.synthetic import (RetrievalExample, answer_log_likelihood, greedy_exact_match,
                                     lines_example, passkey_example, task_grid)
from rope_lab.data.tokenizers import (ByteTokenizer, HFTokenizer, SentencePieceTokenizer, bits_per_byte,
                                      load_tokenizer_spec, save_tokenizer_spec)

__all__ = [
    "BATCH_KEYS", "ByteTokenizer", "DATA_DIR_ENV", "DataConfig", "DataConfigError",
    "DatasetNotPreparedError", "DocumentError", "HFTokenizer", "LongDocument", "RetrievalExample",
    "SentencePieceTokenizer", "TokenStore", "TrainIterator", "UnknownDatasetError", "Window",
    "answer_log_likelihood", "bits_per_byte", "default_data_dir", "get_tokenizer",
    "greedy_exact_match", "lines_example", "load_token_store", "load_tokenizer_spec",
    "long_documents", "make_train_iterator", "passkey_example", "prepare", "resolve_data_dir",
    "save_tokenizer_spec", "sliding_windows", "task_grid",
]
