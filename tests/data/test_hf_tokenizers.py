"""Hugging Face tokenizers (tokenizer.json directories) as data tokenizers, and bytes per token."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rope_lab.data import (DataConfig, DataConfigError, DatasetNotPreparedError, HFTokenizer, get_tokenizer,
                           load_tokenizer_spec, save_tokenizer_spec)
from tests.data.helpers import topic_documents

# Multi-byte characters the small vocabulary below cannot hold whole: they are cut into
# byte tokens, some standing for part of a character.
MIXED = "Naïve café, 東京タワー 😀 — def f(x):\n\treturn x ** 2  # ½\n"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(list(topic_documents().values()), trainer)
  directory = tmp_path_factory.mktemp("hf_tok")
  tok.save(str(directory / "tokenizer.json"))
  return str(directory)


def test_round_trip_and_bytes_per_token_of_split_characters(tokenizer_dir):
  tok = HFTokenizer(f"hf:{tokenizer_dir}")
  ids = tok.encode(MIXED)
  assert tok.decode(ids) == MIXED
  assert tok.eod_id == 0 and tok.pad_id == 0 and tok.vocab_size == 400
  # Every token's own bytes: the sum is the text's UTF-8 length, special tokens add nothing.
  assert tok.count_bytes(ids) == len(MIXED.encode("utf-8"))
  assert tok.count_bytes(ids + [tok.eod_id]) == len(MIXED.encode("utf-8"))
  # Decoding tokens one by one would count a replacement character for each part of a split
  # character: the check above would fail with that count.
  naive = sum(len(tok.decode([i]).encode("utf-8")) for i in ids)
  assert naive != len(MIXED.encode("utf-8"))
  # Any slice of a window counts the bytes of its own tokens (windows score subsets).
  half = len(ids) // 2
  assert tok.count_bytes(ids[:half]) + tok.count_bytes(ids[half:]) == len(MIXED.encode("utf-8"))
  assert np.array_equal(tok.encode_array(MIXED), ids)


def test_data_config_spec_and_errors(tmp_path, tokenizer_dir):
  cfg = DataConfig(dataset="kjv", tokenizer=f"hf:{tokenizer_dir}")
  tok = get_tokenizer(cfg)
  assert isinstance(tok, HFTokenizer)
  save_tokenizer_spec(str(tmp_path), tok)
  again = load_tokenizer_spec(str(tmp_path))
  assert again.encode(MIXED) == tok.encode(MIXED) and again.spec() == tok.spec()
  with pytest.raises(DataConfigError, match="vocab_size=512 differs from the 400 ids"):
    get_tokenizer(DataConfig(dataset="kjv", tokenizer=f"hf:{tokenizer_dir}", vocab_size=512))
  with pytest.raises(DataConfigError, match="DataConfig.tokenizer must be one of .*'hf:<dir"):
    DataConfig(dataset="kjv", tokenizer="hugging:face")
  with pytest.raises(DatasetNotPreparedError, match="no tokenizer.json in"):
    HFTokenizer(f"hf:{tmp_path / 'nowhere'}")
  with pytest.raises(DatasetNotPreparedError, match="GGUF file .* does not exist"):
    get_tokenizer(DataConfig(dataset="kjv", tokenizer=f"gguf:{tmp_path / 'x.gguf'}"))
  broken = tmp_path / "broken"
  os.makedirs(broken)
  (broken / "tokenizer.json").write_text("{not json")
  with pytest.raises(DataConfigError, match="is not a tokenizers file"):
    HFTokenizer(f"hf:{broken}")
