"""Tokenizers: byte level (the default), SentencePiece and Hugging Face, plus the run-directory spec.

Every tokenizer has ``vocab_size``, ``pad_id``, ``eod_id``, ``encode``,
``decode`` and ``count_bytes`` (how many UTF-8 bytes a token sequence stands
for, the denominator of bits per byte), and ``spec()``, a small JSON-able dict
that ``save_tokenizer_spec`` writes into a run directory so evaluation rebuilds
exactly the tokenizer the run trained with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np

from rope_lab.data.errors import DataConfigError, DatasetNotPreparedError

SPEC_FILENAME = "tokenizer_spec.json"
# A SentencePiece run directory keeps its own copy of the model so the run stays
# self-contained when the data directory moves or is cleaned.
SPEC_MODEL_FILENAME = "tokenizer.model"


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then ``pad_id`` = 256 and ``eod_id`` = 257.

  Needs no training and no files; every string encodes and every id sequence
  decodes (invalid UTF-8 decodes with replacement characters).
  """

  kind = "byte"
  vocab_size = 258
  pad_id = 256
  eod_id = 257
  cache_key = "byte"

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_array(self, text: str) -> np.ndarray:
    """Like encode, as a uint16 array, without a Python list in between."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

  def decode(self, ids: Iterable[int]) -> str:
    ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
    return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def count_bytes(self, ids: Sequence[int] | np.ndarray) -> int:
    return int(np.count_nonzero(np.asarray(ids) < 256))

  def spec(self) -> dict:
    return {"kind": "byte", "vocab_size": self.vocab_size}


class SentencePieceTokenizer:
  """A SentencePiece model file; ``eod_id`` is its ``</s>``, ``pad_id`` its ``<pad>``."""

  kind = "sentencepiece"

  def __init__(self, model_path: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(model_path):
      raise DatasetNotPreparedError(f"SentencePiece model file {model_path!r} does not exist")
    with open(model_path, "rb") as f:
      proto = f.read()
    try:
      self._processor = spm.SentencePieceProcessor(model_proto=proto)
    except RuntimeError as e:
      raise DataConfigError(f"{model_path!r} is not a SentencePiece model: {e}") from e
    self.model_path = os.path.abspath(model_path)
    self.model_sha256 = hashlib.sha256(proto).hexdigest()
    self.cache_key = f"spm-{self.model_sha256[:16]}"
    self.vocab_size = self._processor.get_piece_size()
    self.eod_id = self._processor.eos_id()
    self.pad_id = self._processor.pad_id()
    if self.eod_id < 0 or self.pad_id < 0:
      raise DataConfigError(
          f"SentencePiece model {model_path!r} needs an eos and a pad piece "
          f"(eos_id={self.eod_id}, pad_id={self.pad_id})")
    self._byte_lengths = self._piece_byte_lengths()

  def _piece_byte_lengths(self) -> np.ndarray:
    """UTF-8 length of the text each piece stands for (0 for control pieces)."""
    p = self._processor
    lengths = np.zeros(self.vocab_size, dtype=np.int64)
    for i in range(self.vocab_size):
      if p.is_control(i) or p.is_unknown(i):
        continue
      if p.is_byte(i):
        lengths[i] = 1
      else:
        lengths[i] = len(p.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return lengths

  def encode(self, text: str) -> list[int]:
    return self._processor.encode(text)

  def encode_array(self, text: str) -> np.ndarray:
    dtype = np.uint16 if self.vocab_size <= 2**16 else np.int32
    return np.asarray(self._processor.encode(text), dtype=dtype)

  def decode(self, ids: Iterable[int]) -> str:
    return self._processor.decode([int(i) for i in ids])

  def count_bytes(self, ids: Sequence[int] | np.ndarray) -> int:
    return int(self._byte_lengths[np.asarray(ids, dtype=np.int64)].sum())

  def spec(self) -> dict:
    return {"kind": "sentencepiece", "vocab_size": self.vocab_size,
            "model_path": self.model_path, "model_sha256": self.model_sha256}


HF_PREFIX = "hf:"  # DataConfig.tokenizer="hf:<dir holding tokenizer.json>"
GGUF_PREFIX = "gguf:"  # DataConfig.tokenizer="gguf:<file.gguf>": the BPE tokenizer in its metadata


def _byte_level_decoder() -> dict[str, int]:
  """GPT-2's printable stand-in character -> the byte it stands for (byte-level BPE vocabularies)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
               *range(ord("\u00ae"), ord("\u00ff") + 1)]
  stand_ins, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      stand_ins[chr(byte)] = byte
    else:
      stand_ins[chr(256 + extra)] = byte
      extra += 1
  return stand_ins


def _uses_byte_level(spec: dict) -> bool:
  decoder = spec.get("decoder") or {}
  parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
  return any(p.get("type") == "ByteLevel" for p in parts if p)


class HFTokenizer:
  """A Hugging Face ``tokenizers`` tokenizer: a ``tokenizer.json`` directory or a GGUF file's BPE.

  ``source`` is ``hf:<dir>`` or ``gguf:<file>``. ``eod_id`` is the end-of-text token
  (the GGUF's eos, or the first of ``<|endoftext|>``, ``</s>``, ``<eos>``); ``pad_id``
  the padding token if there is one, else ``eod_id``. ``count_bytes`` counts the UTF-8
  bytes each token stands for, from the token's own bytes (a byte-level token may hold
  part of a multi-byte character, which decoding alone would turn into a 3-byte
  replacement character) and 0 for special tokens.
  """

  kind = "hf"

  def __init__(self, source: str):
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    self.source = source
    eod = pad = None
    if source.startswith(GGUF_PREFIX):
      from rope_lab.interop import gguf  # pylint: disable=g-import-not-at-top
      path = os.path.abspath(os.path.expanduser(source[len(GGUF_PREFIX):]))
      if not os.path.isfile(path):
        raise DatasetNotPreparedError(f"DataConfig.tokenizer: GGUF file {path!r} does not exist")
      self._tokenizer = gguf.tokenizer(path)
      eod, pad = gguf.special_token_id(path, "eos"), gguf.special_token_id(path, "padding")
      self.source = GGUF_PREFIX + path
    elif source.startswith(HF_PREFIX):
      directory = os.path.abspath(os.path.expanduser(source[len(HF_PREFIX):]))
      path = os.path.join(directory, "tokenizer.json")
      if not os.path.isfile(path):
        raise DatasetNotPreparedError(f"DataConfig.tokenizer: no tokenizer.json in {directory!r}")
      try:
        self._tokenizer = Tokenizer.from_file(path)
      except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise DataConfigError(f"DataConfig.tokenizer: {path!r} is not a tokenizers file: {e}") from e
      self.source = HF_PREFIX + directory
    else:
      raise DataConfigError(f"DataConfig.tokenizer must start with {HF_PREFIX!r} or {GGUF_PREFIX!r}, got {source!r}")
    serialized = self._tokenizer.to_str()
    self.model_sha256 = hashlib.sha256(serialized.encode("utf-8")).hexdigest()
    self.cache_key = f"hf-{self.model_sha256[:16]}"
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    if eod is None:
      eod = next((i for i in map(self._tokenizer.token_to_id, ("<|endoftext|>", "</s>", "<eos>")) if i is not None),
                 None)
    if eod is None:
      raise DataConfigError(f"DataConfig.tokenizer={source!r} has no end-of-text token "
                            "(<|endoftext|>, </s> or <eos>) to separate documents")
    self.eod_id = int(eod)
    self.pad_id = int(pad) if pad is not None else self.eod_id
    self._byte_lengths = self._token_byte_lengths(json.loads(serialized))

  def _token_byte_lengths(self, spec: dict) -> np.ndarray:
    lengths = np.zeros(self.vocab_size, dtype=np.int64)
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    byte_level = _byte_level_decoder() if _uses_byte_level(spec) else None
    for token, i in self._tokenizer.get_vocab(with_added_tokens=True).items():
      if i in special or i >= self.vocab_size:
        continue
      if byte_level is not None and all(c in byte_level for c in token):
        lengths[i] = len(token)  # one stand-in character per byte
      elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        lengths[i] = 1  # SentencePiece byte fallback
      else:
        lengths[i] = len(token.replace("\u2581", " ").encode("utf-8"))
    return lengths

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_array(self, text: str) -> np.ndarray:
    dtype = np.uint16 if self.vocab_size <= 2**16 else np.int32
    return np.asarray(self.encode(text), dtype=dtype)

  def decode(self, ids: Iterable[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def count_bytes(self, ids: Sequence[int] | np.ndarray) -> int:
    return int(self._byte_lengths[np.asarray(ids, dtype=np.int64)].sum())

  def spec(self) -> dict:
    return {"kind": "hf", "vocab_size": self.vocab_size, "source": self.source,
            "model_sha256": self.model_sha256}


Tokenizer = ByteTokenizer | SentencePieceTokenizer | HFTokenizer


def bits_per_byte(total_nll_nats: float, total_bytes: int) -> float:
  """Converts a summed next-token loss (natural log) into bits per UTF-8 byte."""
  if total_bytes <= 0:
    raise ValueError(f"total_bytes must be positive, got {total_bytes}")
  return float(total_nll_nats) / math.log(2.0) / float(total_bytes)


# ---------------------------------------------------------------------------
# SentencePiece training.

# The smallest vocabulary that holds the 256 byte-fallback pieces and the three
# special pieces with room for at least one merged piece.
MIN_SENTENCEPIECE_VOCAB = 256 + 3 + 1


def _training_lines(texts: Iterable[str], max_line_chars: int) -> Iterable[str]:
  # SentencePiece trains on "sentences" and drops ones longer than its limit,
  # so feed lines (verses, code lines) and cut the rare overlong line.
  for text in texts:
    for line in text.split("\n"):
      if line.strip():
        yield line[:max_line_chars]


def train_sentencepiece(texts: Iterable[str], *, model_type: str, vocab_size: int,
                        output_path: str, seed: int = 0) -> str:
  """Trains a BPE or unigram model on ``texts`` and writes it to ``output_path``.

  Text is kept byte-exact (no normalisation, whitespace kept, no dummy prefix),
  and unknown characters fall back to byte pieces, so decode(encode(s)) == s
  for code as well as prose. The file appears atomically.

  Raises:
    DataConfigError: naming ``vocab_size`` when SentencePiece cannot build a
      model of that size from this text (too small for the characters seen, or
      larger than the text supports).
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if model_type not in ("bpe", "unigram"):
    raise DataConfigError(f"DataConfig.tokenizer must be 'bpe' or 'unigram', got {model_type!r}")
  if vocab_size < MIN_SENTENCEPIECE_VOCAB:
    raise DataConfigError(
        f"DataConfig.vocab_size={vocab_size} cannot be reached by a SentencePiece "
        f"{model_type} model: it needs at least {MIN_SENTENCEPIECE_VOCAB} ids "
        f"(256 byte pieces, 3 special pieces and at least one merge)")
  max_line_chars = 8192
  model = tempfile.SpooledTemporaryFile()
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines(texts, max_line_chars)),
        model_writer=model, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, split_digits=True,
        unk_id=0, eos_id=1, pad_id=2, bos_id=-1,
        max_sentence_length=max_line_chars * 4, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, num_threads=2, minloglevel=2)
  except RuntimeError as e:
    message = str(e).split("] ", 1)[-1].strip()
    raise DataConfigError(
        f"DataConfig.vocab_size={vocab_size} cannot be reached by a SentencePiece "
        f"{model_type} model trained on this text: {message}") from e
  model.seek(0)
  directory = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".incomplete-", suffix=".model")
  with os.fdopen(fd, "wb") as f:
    shutil.copyfileobj(model, f)
  os.replace(tmp_path, output_path)
  return output_path


# ---------------------------------------------------------------------------
# The run-directory spec.


def save_tokenizer_spec(workdir: str, tokenizer: Tokenizer) -> str:
  """Records ``tokenizer`` in ``workdir`` (JSON, plus a model copy for SentencePiece)."""
  os.makedirs(workdir, exist_ok=True)
  spec = dict(tokenizer.spec())
  if spec["kind"] == "sentencepiece":
    copy = os.path.join(workdir, SPEC_MODEL_FILENAME)
    if os.path.abspath(copy) != spec["model_path"]:
      shutil.copyfile(spec["model_path"], copy + ".tmp")
      os.replace(copy + ".tmp", copy)
    spec["model_file"] = SPEC_MODEL_FILENAME
  path = os.path.join(workdir, SPEC_FILENAME)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(spec, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)
  return path


def load_tokenizer_spec(workdir: str) -> Tokenizer:
  """Rebuilds the tokenizer recorded by ``save_tokenizer_spec``."""
  path = os.path.join(workdir, SPEC_FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no tokenizer spec {path!r}; was the run started with this package?")
  with open(path, encoding="utf-8") as f:
    spec = json.load(f)
  kind = spec.get("kind")
  if kind == "byte":
    tokenizer = ByteTokenizer()
  elif kind == "hf":
    tokenizer = HFTokenizer(spec["source"])
    if tokenizer.model_sha256 != spec["model_sha256"]:
      raise ValueError(f"tokenizer {spec['source']!r} differs from the one recorded in {path!r}")
  elif kind == "sentencepiece":
    model_path = os.path.join(workdir, spec.get("model_file", SPEC_MODEL_FILENAME))
    if not os.path.isfile(model_path):
      model_path = spec["model_path"]
    tokenizer = SentencePieceTokenizer(model_path)
    if tokenizer.model_sha256 != spec["model_sha256"]:
      raise ValueError(f"tokenizer model {model_path!r} differs from the one recorded in {path!r}")
  else:
    raise ValueError(f"{path!r}: unknown tokenizer kind {kind!r}")
  if tokenizer.vocab_size != spec["vocab_size"]:
    raise ValueError(f"{path!r}: vocab_size {spec['vocab_size']} recorded, "
                     f"{tokenizer.vocab_size} found")
  return tokenizer
