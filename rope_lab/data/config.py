"""DataConfig: what the trainer and the evaluation code say about their data.

A frozen dataclass validated in ``__post_init__`` so a bad value fails when the
config is built, with a message that names the field, long before any file is
read. Also resolves the data directory (argument, then ``ROPE_LAB_DATA_DIR``,
then the user's cache).
"""

from __future__ import annotations

import dataclasses
import os

from rope_lab.data.errors import DataConfigError, DatasetNotPreparedError, UnknownDatasetError
from rope_lab.data.sources import parse_dataset_name
from rope_lab.errors import check

DATA_DIR_ENV = "ROPE_LAB_DATA_DIR"

TOKENIZER_KINDS = ("byte", "bpe", "unigram")
TOKENIZER_PREFIXES = ("hf:", "gguf:")  # a Hugging Face tokenizer.json directory, a GGUF file's tokenizer
ORDERINGS = ("random", "in_context")
PACKINGS = ("pack", "concat")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where training text comes from and how it becomes batches.

  Attributes:
    dataset: ``kjv`` (default; King James Bible, one document per book), ``kjv_chapters`` (the same
      text, one document per chapter, split by book),
      ``pystdlib`` (Python standard library source, one document per file),
      ``a+b`` (documents of both), ``tfds:<name>[/<config>]`` (a prepared TFDS
      catalog dataset), ``files:<glob>`` (local UTF-8 files, one document per
      file) or ``random:`` (random bytes, no preparation; for tests).
    tokenizer: ``byte`` (default), ``bpe`` or ``unigram`` (SentencePiece model
      trained on the training split and cached in the data directory), or a
      path to an existing SentencePiece ``.model`` file.
    vocab_size: required for ``bpe``/``unigram``; must be left unset (or equal
      the model's size) for ``byte`` and for a ``.model`` path.
    data_dir: where prepared datasets and caches live; None means
      ``$ROPE_LAB_DATA_DIR`` or ``~/.cache/rope_lab/data``.
    ordering: ``random`` document order, or ``in_context`` (In-Context
      Pretraining: related documents are placed next to each other). The
      latter needs ``packing='concat'``, where a row spans several documents.
    packing: ``pack`` (every document piece is its own segment; positions
      restart per piece; short pieces share a row) or ``concat`` (documents
      joined by the end-of-document id into one stream cut into rows; one
      segment per row, attention crosses document boundaries).
    shuffle: shuffle training rows (differently in every epoch).
    num_epochs: stop after this many passes; None repeats forever.
    train_split: split used by make_train_iterator.
    text_feature: the text feature of a ``tfds:`` dataset; None picks
      ``text``, ``book_text`` or ``content``, or the only text feature.
    icp_neighbours: nearest neighbours per document for in-context ordering.
    auto_prepare: prepare an embedded dataset (and train a SentencePiece
      model) on first use instead of failing. Both are fast and offline.
    retrieval_mix: fraction of training rows replaced by short synthetic
      retrieval rows (a short passkey or multi-query associative recall, loss
      on the answers only; ``rope_lab.evaluate.retrieval_data``). 0: none.
    retrieval_min_length, retrieval_max_length: each replaced row is packed
      with examples of this many tokens, drawn uniformly, each its own segment
      with positions from 0 (so the answer is taught at every position up to
      the longest); both 0: one example filling the row.
  """

  dataset: str = "kjv"
  tokenizer: str = "byte"
  vocab_size: int | None = None
  data_dir: str | None = None
  ordering: str = "random"
  packing: str = "pack"
  shuffle: bool = True
  num_epochs: int | None = None
  train_split: str = "train"
  text_feature: str | None = None
  icp_neighbours: int = 8
  auto_prepare: bool = True
  retrieval_mix: float = 0.0
  retrieval_min_length: int = 0
  retrieval_max_length: int = 0

  def __post_init__(self):
    check(isinstance(self.dataset, str) and self.dataset.strip() != "",
          "DataConfig.dataset", "a non-empty dataset name", self.dataset, DataConfigError)
    try:
      parse_dataset_name(self.dataset)
    except UnknownDatasetError as e:
      raise UnknownDatasetError(f"DataConfig.dataset: {e}") from None
    check(isinstance(self.tokenizer, str)
          and (self.tokenizer in TOKENIZER_KINDS or self.tokenizer.endswith(".model")
               or self.tokenizer.startswith(TOKENIZER_PREFIXES)),
          "DataConfig.tokenizer", f"one of {TOKENIZER_KINDS}, a path ending in .model, 'hf:<dir with "
          "tokenizer.json>' or 'gguf:<file.gguf>'", self.tokenizer, DataConfigError)
    check(self.vocab_size is None
          or (isinstance(self.vocab_size, int) and not isinstance(self.vocab_size, bool)
              and self.vocab_size > 0),
          "DataConfig.vocab_size", "None or a positive int", self.vocab_size, DataConfigError)
    if self.tokenizer in ("bpe", "unigram"):
      check(self.vocab_size is not None, "DataConfig.vocab_size",
            f"set when tokenizer={self.tokenizer!r} (the size of the model to train)",
            self.vocab_size, DataConfigError)
    check(self.ordering in ORDERINGS, "DataConfig.ordering", f"one of {ORDERINGS}", self.ordering, DataConfigError)
    check(self.packing in PACKINGS, "DataConfig.packing", f"one of {PACKINGS}", self.packing, DataConfigError)
    if self.ordering == "in_context":
      # Packing gives every document its own segment, so neighbouring documents
      # would never see each other and the ordering would change nothing.
      check(self.packing == "concat", "DataConfig.packing",
            "'concat' when ordering='in_context' (so a context spans related documents)",
            self.packing, DataConfigError)
    check(isinstance(self.shuffle, bool), "DataConfig.shuffle", "a bool", self.shuffle, DataConfigError)
    check(self.num_epochs is None
          or (isinstance(self.num_epochs, int) and self.num_epochs > 0),
          "DataConfig.num_epochs", "None or a positive int", self.num_epochs, DataConfigError)
    check(isinstance(self.train_split, str) and self.train_split != "",
          "DataConfig.train_split", "a split name", self.train_split, DataConfigError)
    check(isinstance(self.icp_neighbours, int) and self.icp_neighbours >= 1,
          "DataConfig.icp_neighbours", "an int >= 1", self.icp_neighbours, DataConfigError)
    check(self.data_dir is None or (isinstance(self.data_dir, str) and self.data_dir != ""),
          "DataConfig.data_dir", "None or a directory path", self.data_dir, DataConfigError)
    check(isinstance(self.retrieval_mix, (int, float)) and not isinstance(self.retrieval_mix, bool)
          and 0 <= self.retrieval_mix <= 1, "DataConfig.retrieval_mix", "a fraction in [0, 1]",
          self.retrieval_mix, DataConfigError)
    lengths = (self.retrieval_min_length, self.retrieval_max_length)
    check(all(isinstance(n, int) and not isinstance(n, bool) for n in lengths)
          and (lengths == (0, 0) or 2 <= lengths[0] <= lengths[1]), "DataConfig.retrieval_min_length",
          "0 with retrieval_max_length 0 (one example per row), or 2 <= retrieval_min_length <= "
          "retrieval_max_length", lengths, DataConfigError)


def default_data_dir() -> str:
  """``$XDG_CACHE_HOME/rope_lab/data`` or ``~/.cache/rope_lab/data``."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "rope_lab", "data")


def resolve_data_dir(data_dir: str | None) -> str:
  """Returns the data directory to use, creating only the default one.

  An explicitly given directory (argument or ``ROPE_LAB_DATA_DIR``) must
  exist: a typo there should fail loudly rather than silently prepare a second
  copy of everything somewhere else.
  """
  if data_dir is not None:
    source = "DataConfig.data_dir"
  elif os.environ.get(DATA_DIR_ENV):
    data_dir, source = os.environ[DATA_DIR_ENV], f"${DATA_DIR_ENV}"
  else:
    path = default_data_dir()
    os.makedirs(path, exist_ok=True)
    return path
  path = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.isdir(path):
    raise DatasetNotPreparedError(
        f"data directory {path!r} (from {source}) does not exist; create it, or leave "
        f"{source} unset to use {default_data_dir()!r}")
  return path
