"""The byte Kneser-Ney baseline against probabilities worked by hand from Chen & Goodman's formulas."""

import math

import numpy as np
import pytest

from rope_lab.errors import ConfigError
from rope_lab.evaluate.ngram import KneserNey, unigram_entropy

V = 256


def test_bigram_on_abab_matches_the_hand_computed_probabilities():
  """Corpus 'abab', order 2, D = 0.5. Bigram counts ab:2, ba:1. Unigram continuation counts
  (distinct left neighbours): a:1 (b), b:1 (a); total 2, 2 types. So
    P1(a) = P1(b) = (1 - .5)/2 + .5*2/2 / 256 = .25 + .5/256,  P1(x) = .5/256 otherwise;
    P(b|a) = (2 - .5)/2 + .5*1/2 * P1(b);  P(a|b) = (1 - .5)/1 + .5*1/1 * P1(a);
    P(a|a) = .5*1/2 * P1(a);  P(x|c) = P1(x) (c never a history)."""
  model = KneserNey(order=2, discount=0.5).fit(b"abab")
  p1 = 0.25 + 0.5 / V
  assert model.probability(b"a", ord("b")) == pytest.approx(0.75 + 0.25 * p1)
  assert model.probability(b"b", ord("a")) == pytest.approx(0.5 + 0.5 * p1)
  assert model.probability(b"a", ord("a")) == pytest.approx(0.25 * p1)
  assert model.probability(b"c", ord("a")) == pytest.approx(p1)
  assert model.probability(b"c", ord("z")) == pytest.approx(0.5 / V)
  assert model.probability(b"", ord("b")) == pytest.approx(p1)  # no history: the unigram level
  # Total bits of 'ab': -log2 P1(a) - log2 P(b|a).
  assert model.bits(b"ab") == pytest.approx(-math.log2(p1) - math.log2(0.75 + 0.25 * p1))


def test_trigram_continuation_counts_by_hand():
  """Corpus 'xay zay xa', order 3, D = 0.5: 'ay' follows x and z, so its continuation count is 2;
  P(y | 'za') = (1 - .5)/1 + .5*1/1 * P2(y|a), P2(y|a) = (2 - .5)/2 + .5*1/2 * P1(y)."""
  data = b"xay zay xa"
  model = KneserNey(order=3, discount=0.5).fit(data)
  # Continuation counts of unigrams: distinct left neighbours over the bigrams of the data.
  bigrams = {data[i:i + 2] for i in range(len(data) - 1)}
  left = {}
  for g in bigrams:
    left.setdefault(g[1:2], set()).add(g[:1])
  total = sum(len(s) for s in left.values())
  p1_y = (len(left[b"y"]) - 0.5) / total + 0.5 * len(left) / total / V
  p2 = 1.5 / 2 + 0.5 * 1 / 2 * p1_y  # 'a' is followed only by 'y' among the continuation bigrams
  assert model.probability(b"za", ord("y")) == pytest.approx(0.5 + 0.5 * p2)


@pytest.mark.parametrize("history", [b"", b"t", b"th", b"the ", b"qqqq", b" the"])
def test_probabilities_sum_to_one(history):
  text = b"the cat sat on the mat; the dog sat on the log. " * 3
  model = KneserNey(order=5).fit(text)
  assert sum(model.probability(history, w) for w in range(V)) == pytest.approx(1.0)


def test_more_context_helps_on_repetitive_text_and_entropy_is_exact():
  text = b"abcdefgh" * 50
  assert KneserNey(order=5).fit(text).bits(text[:80]) < KneserNey(order=1).fit(text).bits(text[:80])
  assert unigram_entropy(b"aabb") == pytest.approx(1.0)
  assert unigram_entropy(bytes(range(256))) == pytest.approx(8.0)


def test_bad_settings_are_named():
  with pytest.raises(ConfigError, match="discount"):
    KneserNey(discount=1.5)
  with pytest.raises(ConfigError, match="data"):
    KneserNey(order=5).fit(b"abc")
  assert np.isfinite(KneserNey(order=3).fit(b"abcabc").bits(b"zzz"))
