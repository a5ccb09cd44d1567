"""Token stores: every document of a split, tokenized once and kept as one flat array.

The training pipeline and the long-document evaluation only slice these arrays
(memory-mapped from the data directory), which is what makes the input
pipeline fast. A store is built the first time a (dataset, split, tokenizer)
triple is asked for and cached under ``<data_dir>/rope_lab_cache/tokens``;
building writes into a temporary directory and renames it into place.

Also here: ``get_tokenizer(cfg)``, since a SentencePiece tokenizer is trained
on (and cached next to) the dataset it tokenizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from rope_lab.data import integrity, sources
from rope_lab.data.config import DataConfig, resolve_data_dir
from rope_lab.data.errors import DataConfigError, DatasetNotPreparedError, DocumentError
from rope_lab.errors import DataError
from rope_lab.data.tokenizers import (GGUF_PREFIX, HF_PREFIX, ByteTokenizer, HFTokenizer,
                                      SentencePieceTokenizer, Tokenizer, train_sentencepiece)

CACHE_DIRNAME = "rope_lab_cache"
RANDOM_MAX_DOC_TOKENS = 2048


@dataclasses.dataclass(frozen=True, eq=False)
class TokenStore:
  """The documents of one split as a flat token array.

  Attributes:
    tokens: 1-D array (uint16 or int32); document ``i`` is
      ``tokens[offsets[i]:offsets[i + 1]]`` and its last token is ``eod_id``.
    offsets: int64 array of ``num_docs + 1`` document boundaries.
    doc_ids: the id of every document.
    eod_id: the end-of-document id that closes every document.
  """
  tokens: np.ndarray
  offsets: np.ndarray
  doc_ids: tuple[str, ...]
  eod_id: int

  @property
  def num_docs(self) -> int:
    return len(self.doc_ids)

  @property
  def num_tokens(self) -> int:
    return int(self.offsets[-1])

  def lengths(self) -> np.ndarray:
    """Tokens per document, counting the closing end-of-document id."""
    return np.diff(self.offsets)

  def document(self, index: int) -> np.ndarray:
    """Document ``index``'s tokens as int32, without its end-of-document id."""
    return np.asarray(self.tokens[self.offsets[index]:self.offsets[index + 1] - 1],
                      dtype=np.int32)


def _token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 2**16 else np.int32


# ---------------------------------------------------------------------------
# Tokenizers.


def sentencepiece_model_path(cfg: DataConfig, data_dir: str) -> str:
  spec = sources.parse_dataset_name(cfg.dataset)
  key = sources.source_key(spec, data_dir)
  return os.path.join(data_dir, CACHE_DIRNAME, "tokenizers",
                      f"{key}-{cfg.train_split}-{cfg.tokenizer}-{cfg.vocab_size}.model")


def get_tokenizer(cfg: DataConfig) -> Tokenizer:
  """The tokenizer ``cfg`` names, training (and caching) a SentencePiece model if needed."""
  if cfg.tokenizer == "byte":
    if cfg.vocab_size is not None and cfg.vocab_size != ByteTokenizer.vocab_size:
      raise DataConfigError(
          f"DataConfig.vocab_size={cfg.vocab_size} cannot be reached by the byte tokenizer, "
          f"which always has {ByteTokenizer.vocab_size} ids; leave vocab_size unset")
    return ByteTokenizer()
  if cfg.tokenizer.endswith(".model") or cfg.tokenizer.startswith((HF_PREFIX, GGUF_PREFIX)):
    if cfg.tokenizer.endswith(".model"):
      tokenizer = SentencePieceTokenizer(os.path.expanduser(cfg.tokenizer))
    else:
      tokenizer = HFTokenizer(cfg.tokenizer)
    if cfg.vocab_size is not None and cfg.vocab_size != tokenizer.vocab_size:
      raise DataConfigError(
          f"DataConfig.vocab_size={cfg.vocab_size} differs from the {tokenizer.vocab_size} ids "
          f"of {cfg.tokenizer!r}; leave vocab_size unset")
    return tokenizer
  spec = sources.parse_dataset_name(cfg.dataset)
  if spec.kind == "random":
    raise DataConfigError(f"DataConfig.tokenizer={cfg.tokenizer!r} needs text to train on; "
                          f"dataset {cfg.dataset!r} has none, use tokenizer='byte'")
  data_dir = resolve_data_dir(cfg.data_dir)
  path = sentencepiece_model_path(cfg, data_dir)
  if not os.path.isfile(path):
    if not cfg.auto_prepare:
      raise DatasetNotPreparedError(
          f"no {cfg.tokenizer} tokenizer with vocab_size={cfg.vocab_size} for {cfg.dataset!r} "
          f"({path!r}); run python -m experiments.prepare_data --dataset={cfg.dataset} "
          f"--tokenizer={cfg.tokenizer} --vocab_size={cfg.vocab_size} --data_dir={data_dir}")
    texts = (text for _, text in sources.iter_documents(
        spec, cfg.train_split, data_dir, text_feature=cfg.text_feature,
        auto_prepare=cfg.auto_prepare))
    train_sentencepiece(texts, model_type=cfg.tokenizer, vocab_size=cfg.vocab_size,
                        output_path=path)
  return SentencePieceTokenizer(path)


# ---------------------------------------------------------------------------
# Stores.


def random_token_store(num_docs: int, split: str, eod_id: int) -> TokenStore:
  """Random byte documents of 1..2048 tokens, fixed by the split name (not the run seed)."""
  seed = int.from_bytes(hashlib.sha256(f"random:{num_docs}:{split}".encode()).digest()[:8], "big")
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, RANDOM_MAX_DOC_TOKENS + 1, size=num_docs) + 1
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  tokens = rng.integers(0, 256, size=int(offsets[-1]), dtype=np.uint16)
  tokens[offsets[1:] - 1] = eod_id
  return TokenStore(tokens=tokens, offsets=offsets,
                    doc_ids=tuple(f"random-{i}" for i in range(num_docs)), eod_id=eod_id)


def _write_store(directory: str, documents, tokenizer: Tokenizer, dataset: str,
                 split: str) -> None:
  dtype = _token_dtype(tokenizer.vocab_size)
  eod = np.asarray([tokenizer.eod_id], dtype=dtype)
  offsets, doc_ids = [0], []
  with open(os.path.join(directory, "tokens.bin"), "wb") as f:
    for doc_id, text in documents:
      ids = tokenizer.encode_array(text).astype(dtype, copy=False)
      if ids.size == 0:
        continue
      f.write(ids.tobytes())
      f.write(eod.tobytes())
      offsets.append(offsets[-1] + ids.size + 1)
      doc_ids.append(doc_id)
  if not doc_ids:
    raise DocumentError(f"split {split!r} of dataset {dataset!r} has no documents")
  np.save(os.path.join(directory, "offsets.npy"), np.asarray(offsets, dtype=np.int64))
  with open(os.path.join(directory, "doc_ids.json"), "w", encoding="utf-8") as f:
    json.dump(doc_ids, f)
  with open(os.path.join(directory, "meta.json"), "w", encoding="utf-8") as f:
    json.dump({"dataset": dataset, "split": split, "dtype": np.dtype(dtype).name,
               "num_tokens": offsets[-1], "num_docs": len(doc_ids),
               "tokenizer": tokenizer.spec(), "eod_id": tokenizer.eod_id,
               "files": integrity.fingerprints(directory, CACHE_FILES)}, f, indent=2)


CACHE_FILES = ("tokens.bin", "offsets.npy", "doc_ids.json")


def _read_store(directory: str) -> TokenStore:
  """The cache in ``directory``, after checking its files' sizes and checksums."""
  remedy = f"delete {directory} (a token cache; the next run rebuilds it)"
  try:
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
      meta = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"token cache {directory}: meta.json is not valid JSON ({e}); {remedy}") from None
  if "files" in meta:
    integrity.check_fingerprints(directory, meta["files"], "token cache", remedy)
  else:  # a cache written before checksums were recorded: at least the size must fit
    expected = meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize
    size = os.path.getsize(os.path.join(directory, "tokens.bin"))
    if size != expected:
      raise DataError(f"token cache: {os.path.join(directory, 'tokens.bin')} holds {size:,} bytes, "
                      f"{expected:,} expected; {remedy}")
  with open(os.path.join(directory, "doc_ids.json"), encoding="utf-8") as f:
    doc_ids = tuple(json.load(f))
  tokens = np.memmap(os.path.join(directory, "tokens.bin"), dtype=meta["dtype"], mode="r",
                     shape=(meta["num_tokens"],))
  offsets = np.load(os.path.join(directory, "offsets.npy"))
  return TokenStore(tokens=tokens, offsets=offsets, doc_ids=doc_ids, eod_id=meta["eod_id"])


def store_dir(cfg: DataConfig, split: str, tokenizer: Tokenizer, data_dir: str) -> str:
  key = sources.source_key(sources.parse_dataset_name(cfg.dataset), data_dir)
  feature = f"-{cfg.text_feature}" if cfg.text_feature else ""
  return os.path.join(data_dir, CACHE_DIRNAME, "tokens", key + feature, split,
                      tokenizer.cache_key)


def load_token_store(cfg: DataConfig, split: str,
                     tokenizer: Tokenizer | None = None) -> TokenStore:
  """The token store of ``split``, built and cached on first use."""
  tokenizer = tokenizer or get_tokenizer(cfg)
  spec = sources.parse_dataset_name(cfg.dataset)
  if spec.kind == "random":
    if tokenizer.kind != "byte":
      raise DataConfigError(f"dataset {cfg.dataset!r} makes random bytes; it needs "
                            f"DataConfig.tokenizer='byte', got {cfg.tokenizer!r}")
    return random_token_store(spec.num_docs, split, tokenizer.eod_id)
  data_dir = resolve_data_dir(cfg.data_dir)
  if spec.kind == "embedded" and not sources.is_embedded_prepared(spec.name, data_dir):
    if not cfg.auto_prepare:
      raise DatasetNotPreparedError(
          f"dataset {spec.name!r} is not prepared under {data_dir!r}; run "
          f"python -m experiments.prepare_data --dataset={spec.name} --data_dir={data_dir}")
    sources.prepare_embedded(spec.name, data_dir)
  # The cache is rebuilt from the records when deleted; a damaged copy must not go
  # unnoticed just because the cache was built before the damage.
  for part in (spec.parts if spec.kind == "mixture" else (spec,)):
    if part.kind == "embedded" and sources.is_embedded_prepared(part.name, data_dir):
      sources.check_embedded_records(part.name, data_dir)
  directory = store_dir(cfg, split, tokenizer, data_dir)
  if not os.path.isfile(os.path.join(directory, "meta.json")):
    documents = sources.iter_documents(spec, split, data_dir, text_feature=cfg.text_feature,
                                       auto_prepare=cfg.auto_prepare)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(directory), prefix=".incomplete-")
    try:
      _write_store(tmp, documents, tokenizer, cfg.dataset, split)
      try:
        os.rename(tmp, directory)
      except OSError:
        if not os.path.isfile(os.path.join(directory, "meta.json")):
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return _read_store(directory)
