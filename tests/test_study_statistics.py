"""Block-bootstrap intervals and verdicts: checked on properties that must hold and a case by hand."""

import math

import numpy as np
import pytest

from rope_lab.errors import ConfigError
from rope_lab.study import statistics as st


def units(*sides_nll, nbytes=None):
  nll = np.asarray(sides_nll, np.float64)
  return st.Units(nll=nll, bytes=np.ones_like(nll) if nbytes is None else np.asarray(nbytes, np.float64))


def row(nll, starts, nbytes=None, doc=None):
  n = len(nll)
  return {"key": "r", "windows": {"doc": doc or [0] * n, "start": list(starts), "nll": list(nll),
                                  "bytes": nbytes or [1] * n}}


def test_hand_computed_two_units_block_one():
  """Differences (a - b) of 0 and 1 nats per byte over two units, blocks of one: a resample of two
  draws has mean 0, 0.5 or 1 nats with probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5%
  quantiles are 0 and 1 nats, i.e. 0 and 1/ln 2 bits; the estimate is 0.5 nats = 0.5/ln 2 bits."""
  found = st.interval(units([1.0, 2.0], [1.0, 1.0]), "difference", block=1, resamples=4000, seed=3)
  assert found.estimate == pytest.approx(0.5 / math.log(2))
  assert found.low == pytest.approx(0.0) and found.high == pytest.approx(1 / math.log(2))


def test_blocks_are_shortened_so_that_a_few_units_still_resample():
  """Five units with blocks of 8: one block spanning every unit would resample the same set every
  time (a zero-width interval, a verdict from nothing); blocks shrink to give >= MIN_BLOCKS."""
  found = st.interval(units([1.0, 3.0, 2.0, 4.0, 0.5], [2.0] * 5), "difference", block=8, resamples=400)
  assert found.low < found.estimate < found.high


def test_a_contrast_over_too_few_windows_has_no_interval_and_no_verdict():
  from rope_lab.study import claims  # pylint: disable=g-import-not-at-top
  few = {0: {**row([5.0] * 5, range(0, 50, 10)), "metrics": {"bits_per_byte": 1.0}}}
  low = {0: {**row([1.0] * 5, range(0, 50, 10)), "metrics": {"bits_per_byte": 0.2}}}
  found = claims.contrast("c", "s", "r", low, few, statistic="difference", threshold=0.0)
  assert found.verdict == "inconclusive" and "5 windows" in found.measured and found.interval is None
  assert st.row_interval(low[0], few[0]) is None
  many = {0: {**row([5.0, 6.0] * 10, range(0, 200, 10)), "metrics": {"bits_per_byte": 1.0}}}
  less = {0: {**row([1.0, 1.5] * 10, range(0, 200, 10)), "metrics": {"bits_per_byte": 0.2}}}
  assert claims.contrast("c", "s", "r", less, many, statistic="difference", threshold=0.0).verdict == "agrees"


def test_identical_sides_give_a_zero_width_interval_at_zero():
  rng = np.random.default_rng(0)
  nll = rng.gamma(2.0, size=200)
  for statistic in ("difference", "relative"):
    found = st.interval(units(nll, nll), statistic, block=5, resamples=300)
    assert found.estimate == found.low == found.high == 0.0


def _coverage(n, reps, delta, seed):
  """Share of intervals holding the true difference, for AR(1) window losses with a known shift."""
  rng = np.random.default_rng(seed)
  hits = 0
  for rep in range(reps):
    shared = np.empty(n)
    shared[0] = rng.normal()
    for i in range(1, n):  # correlated neighbours, as in consecutive windows of a book
      shared[i] = 0.6 * shared[i - 1] + rng.normal()
    a = 5.0 + shared + 0.3 * rng.normal(size=n)
    b = 5.0 + delta + shared + 0.3 * rng.normal(size=n)
    found = st.interval(units(a, b), "difference", block=8, resamples=400, seed=rep)
    hits += found.low <= -delta / math.log(2) <= found.high
  return hits / reps


def test_coverage_on_synthetic_data_with_a_known_difference():
  # The true difference of the expected bits per byte is -delta / ln 2 (bytes are all 1).
  coverage = _coverage(n=200, reps=150, delta=0.1, seed=0)
  assert 0.85 <= coverage <= 0.995


def test_width_shrinks_with_more_windows():
  rng = np.random.default_rng(1)
  widths = []
  for n in (50, 800):
    a, b = rng.normal(5, 1, n), rng.normal(5.2, 1, n)
    found = st.interval(units(a, b), "difference", block=4, resamples=500)
    widths.append(found.high - found.low)
  assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16) = 1/4 of the width


def test_verdict_needs_the_interval_to_clear_the_threshold():
  assert st.verdict(st.Interval(-0.2, -0.3, -0.1), 0.0) == "agrees"
  assert st.verdict(st.Interval(0.2, 0.1, 0.3), 0.0) == "disagrees"
  assert st.verdict(st.Interval(-0.1, -0.3, 0.05), 0.0) == "inconclusive"
  assert st.verdict(st.Interval(0.2, 0.1, 0.3), 0.05, below=False) == "agrees"
  assert st.verdict(None, 0.0) == "inconclusive"


def test_rows_of_two_lengths_are_matched_on_the_longer_windows():
  """A long window scoring tokens 0..7 and two short ones scoring 0..3 and 4..7 are one unit."""
  long_row = row([8.0, 8.0], [0, 8], nbytes=[8, 8])
  short_row = row([3.0, 3.0, 5.0, 5.0], [0, 4, 8, 12], nbytes=[4, 4, 4, 4])
  aligned = st.aligned_units(long_row, short_row)
  np.testing.assert_allclose(aligned.nll, [[8, 8], [6, 10]])
  np.testing.assert_allclose(aligned.bytes, [[8, 8], [8, 8]])
  assert st.interval(aligned, block=1, resamples=100).estimate == pytest.approx(0.0)
  assert st.row_interval({"key": "old", "metrics": {}}, short_row) is None


def test_bad_statistic_is_named():
  with pytest.raises(ConfigError, match="statistic"):
    st.interval(units([1.0], [1.0]), "ratio")
