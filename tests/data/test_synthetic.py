"""Synthetic retrieval tasks put the answer where they say, and the scorers are right."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rope_lab.data import (ByteTokenizer, DataConfigError, answer_log_likelihood,
                           greedy_exact_match, lines_example, passkey_example, task_grid)
from rope_lab.data.synthetic import PASSKEY_PREFIX, PASSKEY_QUESTION
from rope_lab.data.tokenizers import SentencePieceTokenizer, train_sentencepiece
from tests.data.helpers import topic_documents

BYTES = ByteTokenizer()


@pytest.mark.parametrize("length", [250, 1000, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_passkey_layout(length, depth):
  example = passkey_example(BYTES, length, depth, seed=0)
  text = BYTES.decode(example.tokens)
  key = example.answer.strip()
  assert len(example.tokens) == length
  assert key.isdigit() and len(key) == 5
  assert BYTES.decode(example.answer_ids) == example.answer
  assert text.endswith("The pass key is " + key)
  needle = BYTES.decode(example.tokens[example.needle_start:example.needle_end])
  assert needle == f" The pass key is {key}. Remember it. {key} is the pass key."
  assert text.count(key) == 3  # Twice in the needle, once as the answer.
  filler_end = example.answer_start - len(BYTES.encode(PASSKEY_QUESTION))
  filler_start = len(BYTES.encode(PASSKEY_PREFIX))
  budget = filler_end - filler_start - (example.needle_end - example.needle_start)
  wanted = filler_start + depth * budget
  # The needle sits at a sentence boundary within one filler sentence of the depth.
  assert abs(example.needle_start - wanted) <= 12
  assert example.depth == example.needle_start / length


def test_passkey_is_deterministic_and_seeded():
  a = passkey_example(BYTES, 500, 0.5, seed=3)
  b = passkey_example(BYTES, 500, 0.5, seed=3)
  c = passkey_example(BYTES, 500, 0.5, seed=4)
  assert np.array_equal(a.tokens, b.tokens) and a.answer != c.answer


def test_lines_layout():
  example = lines_example(BYTES, 2000, 0.5, seed=1)
  text = BYTES.decode(example.tokens)
  assert len(example.tokens) <= 2000
  line = BYTES.decode(example.tokens[example.needle_start:example.needle_end])
  name, value = line[len("line "):].split(": REGISTER_CONTENT is ")
  assert value.strip() == example.answer.strip()
  assert text.endswith(f"REGISTER_CONTENT in line {name} is{example.answer}")
  assert text.count(f"line {name}:") == 1  # Line names are unique.
  assert 0.3 < example.depth < 0.7


def test_grid_covers_all_cells():
  grid = task_grid("passkey", BYTES, lengths=[300, 600], depths=[0.0, 0.5, 1.0], samples=2)
  assert len(grid) == 12 and sorted({len(e.tokens) for e in grid}) == [300, 600]
  assert len({e.answer for e in grid}) > 6


def test_spans_are_exact_with_sentencepiece(tmp_path):
  texts = list(topic_documents().values()) + ["The pass key is 12345. What is the pass key?"]
  tok = SentencePieceTokenizer(train_sentencepiece(
      texts, model_type="bpe", vocab_size=300, output_path=str(tmp_path / "m.model")))
  for example in (passkey_example(tok, 400, 0.5, 0), lines_example(tok, 600, 0.2, 0)):
    assert tok.decode(example.answer_ids) == example.answer
    needle = example.tokens[example.needle_start:example.needle_end]
    assert example.answer.strip() in tok.decode(needle)


def test_too_short_length_is_an_error():
  with pytest.raises(DataConfigError, match="length=50 is too short"):
    passkey_example(BYTES, 50, 0.5, 0)
  with pytest.raises(DataConfigError, match="depth"):
    passkey_example(BYTES, 500, 1.5, 0)


VOCAB = BYTES.vocab_size


def oracle_logits(examples):
  """A 'model' that knows every example: puts its mass on the true next token."""
  by_prefix = {}
  for e in examples:
    for t in range(len(e.tokens) - 1):
      by_prefix[e.tokens[:t + 1].tobytes()] = int(e.tokens[t + 1])
  def logits_fn(tokens):
    out = np.zeros(tokens.shape + (VOCAB,), dtype=np.float32)
    for b in range(tokens.shape[0]):
      for t in range(tokens.shape[1]):
        nxt = by_prefix.get(tokens[b, :t + 1].tobytes())
        if nxt is not None:
          out[b, t, nxt] = 30.0
    return out
  return logits_fn


def test_scoring_with_oracle_and_uniform_models():
  examples = [passkey_example(BYTES, 200, d, seed=s) for d in (0.0, 1.0) for s in (0, 1)]
  examples.append(lines_example(BYTES, 400, 0.5, seed=0))
  oracle = oracle_logits(examples)
  assert np.all(greedy_exact_match(oracle, examples, batch_size=3))
  assert np.all(answer_log_likelihood(oracle, examples) > -1e-3)

  uniform = lambda tokens: np.zeros(tokens.shape + (VOCAB,), dtype=np.float32)
  loglik = answer_log_likelihood(uniform, examples)
  expected = [-len(e.answer_ids) * math.log(VOCAB) for e in examples]
  np.testing.assert_allclose(loglik, expected, rtol=1e-6)
  # argmax of all-zero logits is token 0, never a digit.
  assert not np.any(greedy_exact_match(uniform, examples))


def test_greedy_decoding_feeds_back_its_own_tokens():
  example = passkey_example(BYTES, 250, 0.5, seed=0)
  key = example.answer_ids
  calls = []
  def first_digit_right(tokens):
    # Predicts the answer's first token after the prompt, then always '0'.
    calls.append(tokens.copy())
    out = np.zeros(tokens.shape + (VOCAB,), dtype=np.float32)
    out[:, :, ord("0")] = 1.0
    out[:, example.answer_start - 1, :] = 0.0
    out[:, example.answer_start - 1, key[0]] = 1.0
    return out
  assert not greedy_exact_match(first_digit_right, [example])[0]
  assert len(calls) == len(key)
  assert calls[1][0, example.answer_start] == key[0]  # Step 2 saw step 1's token.
  assert calls[-1][0, example.answer_start + 1] == ord("0")
