"""Byte n-gram baseline (interpolated Kneser-Ney) and the unigram entropy: pure Python and numpy.

What a model that ignores all but the last few bytes achieves: a transformer whose long
context is worth anything must beat it on the same held-out bytes. The model is the
interpolated Kneser-Ney of Chen & Goodman (1998) with one absolute discount D at every order:

  top order n:   P(w | h) = max(c(hw) - D, 0) / c(h.) + D * N1+(h.) / c(h.) * P(w | h')
  lower orders:  the same with continuation counts N1+(.hw) (distinct bytes seen before hw)
  order 0:       uniform over the vocabulary

where h' drops the first byte of h. A history never seen at the top order backs off fully to
P(w | h'). Positions with fewer than n-1 bytes of history start at the order they have.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from rope_lab.errors import check


class KneserNey:
  """An order-``order`` interpolated Kneser-Ney model over byte strings."""

  def __init__(self, order: int = 5, discount: float = 0.75, vocab_size: int = 256):
    check(isinstance(order, int) and order >= 1, "KneserNey order", "an int >= 1", order)
    check(0 < discount < 1, "KneserNey discount", "in (0, 1)", discount)
    self.order, self.discount, self.vocab_size = order, discount, vocab_size
    # counts[k][gram] for grams of k bytes: raw counts at the top order, continuation counts below.
    self.counts: list[dict[bytes, int]] = []
    self.context_total: list[dict[bytes, int]] = []  # sum over w of counts[k][h + w], by h
    self.context_types: list[dict[bytes, int]] = []  # number of w with counts[k][h + w] > 0, by h

  def fit(self, data: bytes) -> KneserNey:
    check(len(data) >= self.order, "KneserNey.fit data", f"at least order={self.order} bytes", len(data))
    n = self.order
    counts = [collections.Counter() for _ in range(n + 1)]
    counts[n] = collections.Counter(data[i:i + n] for i in range(len(data) - n + 1))
    for k in range(n - 1, 0, -1):  # continuation counts: distinct left extensions of each k-gram
      for gram in counts[k + 1]:
        counts[k][gram[1:]] += 1
    self.counts = counts
    self.context_total = [collections.Counter() for _ in range(n + 1)]
    self.context_types = [collections.Counter() for _ in range(n + 1)]
    for k in range(1, n + 1):
      for gram, c in counts[k].items():
        self.context_total[k][gram[:-1]] += c
        self.context_types[k][gram[:-1]] += 1
    return self

  def probability(self, history: bytes, byte: int) -> float:
    """P(byte | the last order-1 bytes of history)."""
    history = history[len(history) - self.order + 1:] if self.order > 1 else b""
    return self._p(history, bytes([byte]), len(history) + 1)

  def _p(self, history: bytes, w: bytes, k: int) -> float:
    if k == 0:
      return 1.0 / self.vocab_size
    lower = self._p(history[1:], w, k - 1) if k > 1 else self._p(b"", w, 0)
    total = self.context_total[k].get(history, 0)
    if total == 0:
      return lower
    c = self.counts[k].get(history + w, 0)
    d = self.discount
    return max(c - d, 0.0) / total + d * self.context_types[k][history] / total * lower

  def bits(self, data: bytes) -> float:
    """Total -log2 P of every byte of ``data``, each given the bytes before it in ``data``."""
    n = self.order
    return -math.fsum(math.log2(self.probability(data[max(0, i - n + 1):i], data[i])) for i in range(len(data)))


def unigram_entropy(data: bytes) -> float:
  """Entropy (bits per byte) of the byte frequencies of ``data``."""
  counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())
