"""The trainer's held-out batches are tokenized like its training rows.

A SentencePiece tokenizer is trained on the training split. Evaluation batches during
training come from another split, and must still use that tokenizer: a tokenizer trained
on the validation split numbers its pieces differently, and the evaluation loss of a model
read through it is meaningless (it sat above the uniform loss, ln V).
"""

import dataclasses

import numpy as np

from rope_lab.data import DataConfig, get_tokenizer
from rope_lab.training.loop import rope_lab_data_source

CFG = DataConfig(dataset="kjv", tokenizer="bpe", vocab_size=512)


def test_held_out_batches_use_the_training_splits_tokenizer():
  train_tokenizer = get_tokenizer(CFG)
  validation_tokenizer = get_tokenizer(dataclasses.replace(CFG, train_split="validation"))
  assert validation_tokenizer.cache_key != train_tokenizer.cache_key  # the two really differ
  make = rope_lab_data_source(CFG)
  held_out = make("validation", seq_len=64, global_batch_size=2, seed=0)
  assert held_out.tokenizer.cache_key == train_tokenizer.cache_key
  batch = next(held_out)
  # The rows decode, with the training tokenizer, to text of a validation book.
  text = train_tokenizer.decode([int(t) for t in batch["inputs"][0] if t < train_tokenizer.vocab_size])
  from rope_lab.data import long_documents  # pylint: disable=g-import-not-at-top
  books = [train_tokenizer.decode(d.tokens) for d in
           long_documents(CFG, "validation", min_tokens=2, max_docs=10, tokenizer=train_tokenizer)]
  words = [w for w in text.split() if len(w) > 3][:5]
  assert words and any(all(w in book for w in words) for book in books)
  assert np.asarray(batch["inputs"]).shape == (2, 64)
