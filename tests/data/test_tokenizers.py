"""Byte and SentencePiece tokenizers, bits per byte, and the run-directory spec."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from rope_lab.data import (ByteTokenizer, DataConfig, DataConfigError, SentencePieceTokenizer,
                           bits_per_byte, get_tokenizer, load_tokenizer_spec,
                           save_tokenizer_spec)
from rope_lab.data.tokenizers import SPEC_FILENAME, train_sentencepiece
from tests.data.helpers import topic_documents

CODE = "def f(x):\n    if  x:\n\treturn 'é☃'\n\n"


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  texts = list(topic_documents().values()) + [CODE * 3]
  path = str(tmp_path_factory.mktemp("spm") / "tiny.model")
  return train_sentencepiece(texts, model_type="bpe", vocab_size=320, output_path=path)


def test_byte_tokenizer_round_trip_and_specials():
  tok = ByteTokenizer()
  ids = tok.encode(CODE)
  assert tok.decode(ids) == CODE and max(ids) < 256
  assert tok.vocab_size == 258 and {tok.pad_id, tok.eod_id} == {256, 257}
  assert tok.decode(ids + [tok.eod_id, tok.pad_id]) == CODE
  assert tok.count_bytes(ids + [tok.eod_id]) == len(CODE.encode())
  assert np.array_equal(tok.encode_array(CODE), ids)


def test_sentencepiece_is_byte_exact_and_counts_bytes(spm_model):
  tok = SentencePieceTokenizer(spm_model)
  assert tok.vocab_size == 320
  for text in (CODE, "  leading spaces and trailing  \n", "unseen: ĳ 𝄞 \x07"):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.count_bytes(ids) == len(text.encode("utf-8"))
  assert tok.eod_id not in tok.encode(CODE) and tok.pad_id != tok.eod_id


def test_spec_round_trip(tmp_path, spm_model):
  for tok in (ByteTokenizer(), SentencePieceTokenizer(spm_model)):
    workdir = str(tmp_path / tok.kind)
    save_tokenizer_spec(workdir, tok)
    with open(os.path.join(workdir, SPEC_FILENAME)) as f:
      assert json.load(f)["kind"] == tok.kind
    loaded = load_tokenizer_spec(workdir)
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    assert loaded.encode(CODE) == tok.encode(CODE)


def test_sentencepiece_spec_survives_moving_the_model(tmp_path, spm_model):
  moved = str(tmp_path / "moved.model")
  with open(spm_model, "rb") as src, open(moved, "wb") as dst:
    dst.write(src.read())
  workdir = str(tmp_path / "run")
  save_tokenizer_spec(workdir, SentencePieceTokenizer(moved))
  os.remove(moved)
  assert load_tokenizer_spec(workdir).vocab_size == 320


def test_get_tokenizer_trains_and_caches_sentencepiece(topic_corpus):
  data_dir, dataset = topic_corpus
  cfg = DataConfig(dataset=dataset, data_dir=data_dir, tokenizer="unigram", vocab_size=300)
  first = get_tokenizer(cfg)
  again = get_tokenizer(cfg)
  assert first.vocab_size == 300 and first.model_path == again.model_path
  assert first.model_path.startswith(data_dir)
  by_path = get_tokenizer(DataConfig(dataset=dataset, tokenizer=first.model_path))
  assert by_path.model_sha256 == first.model_sha256


def test_bits_per_byte():
  assert bits_per_byte(math.log(2) * 8, 8) == pytest.approx(1.0)
  with pytest.raises(ValueError):
    bits_per_byte(1.0, 0)


@pytest.mark.parametrize("vocab_size", [100, 5000])
def test_unreachable_sentencepiece_vocab_names_the_parameter(tmp_path, vocab_size):
  texts = list(topic_documents(num_per_topic=2).values())
  with pytest.raises(DataConfigError, match=f"vocab_size={vocab_size}"):
    train_sentencepiece(texts, model_type="unigram", vocab_size=vocab_size,
                        output_path=str(tmp_path / "m.model"))
  assert not os.listdir(tmp_path)


def test_unreachable_byte_vocab_names_the_parameter():
  with pytest.raises(DataConfigError, match="vocab_size=1000.*byte"):
    get_tokenizer(DataConfig(vocab_size=1000))
  assert get_tokenizer(DataConfig(vocab_size=258)).vocab_size == 258


def test_vocab_too_small_for_the_characters_names_the_parameter(tmp_path):
  many_characters = ["".join(chr(0x4E00 + i) for i in range(start, start + 50)) * 3
                     for start in range(0, 400, 50)]
  with pytest.raises(DataConfigError, match="vocab_size=300.*smaller than required"):
    train_sentencepiece(many_characters, model_type="bpe", vocab_size=300,
                        output_path=str(tmp_path / "m.model"))
