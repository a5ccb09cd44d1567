"""Paired block-bootstrap intervals over evaluation windows, and the verdict a rule draws from one.

A perplexity row stores, per sliding window, its summed NLL (nats) and its scored bytes
(``row["windows"]``). Bits per byte over any set of windows is sum(nll) / (ln 2 * sum(bytes)).
Neighbouring windows of one book are correlated, so windows are resampled in blocks of
consecutive windows (a moving-block bootstrap). A contrast between two rows is paired: both
sides are read at the same resampled units, so the noise of the shared text cancels.

Two rows at different window lengths cover the same tokens with different windows. They are
matched on *units*: the windows of the row with fewer (longer) windows; each window of the
other row is assigned to the unit whose scored span holds its first scored token.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from rope_lab.errors import check

NO_WINDOWS = "no interval (per-window losses not stored)"
DEFAULT_RESAMPLES = 2000
DEFAULT_BLOCK = 8
# A moving-block bootstrap needs several blocks: with n units in one block every resample is the
# same set and the interval has zero width. Blocks are shortened to give at least MIN_BLOCKS, and
# fewer than MIN_UNITS units (e.g. a few documents at the longest window) give no interval at all.
MIN_BLOCKS = 5
MIN_UNITS = 10


def too_few_units(n: int) -> str:
  return f"no interval ({n} windows; an interval needs at least {MIN_UNITS})"


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate with its 95% (or ``level``) percentile interval."""

  estimate: float
  low: float
  high: float
  level: float = 0.95

  def format(self, digits: int = 3) -> str:
    return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclasses.dataclass(frozen=True)
class Units:
  """Per-unit NLL (nats) and bytes of one or two rows, aligned unit by unit."""

  nll: np.ndarray    # [sides, n]
  bytes: np.ndarray  # [sides, n]


def has_windows(row: dict) -> bool:
  return bool(row.get("windows")) and bool(row["windows"].get("nll"))


def _spans(record: dict) -> tuple[np.ndarray, np.ndarray]:
  return np.asarray(record["doc"], np.int64), np.asarray(record["start"], np.int64)


def aligned_units(*rows: dict) -> Units:
  """The rows' windows summed onto common units (the windows of the row with the fewest)."""
  check(len(rows) >= 1 and all(has_windows(r) for r in rows), "aligned_units", "rows with per-window losses",
        [r.get("key") for r in rows])
  records = [r["windows"] for r in rows]
  coarse = min(records, key=lambda w: len(w["nll"]))
  coarse_doc, coarse_start = _spans(coarse)
  n = len(coarse_doc)
  nll, nbytes = np.zeros((len(rows), n)), np.zeros((len(rows), n))
  for side, record in enumerate(records):
    doc, start = _spans(record)
    unit = np.empty(len(doc), np.int64)
    for d in np.unique(doc):
      owners = np.flatnonzero(coarse_doc == d)
      check(owners.size > 0, "aligned_units", "rows over the same documents", int(d))
      here = doc == d
      position = np.searchsorted(coarse_start[owners], start[here], side="right") - 1
      unit[here] = owners[np.clip(position, 0, owners.size - 1)]
    np.add.at(nll[side], unit, np.asarray(record["nll"], np.float64))
    np.add.at(nbytes[side], unit, np.asarray(record["bytes"], np.float64))
  return Units(nll=nll, bytes=nbytes)


def block_resample_indices(n: int, block: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
  """[resamples, n] unit indices: ceil(n / block) blocks of consecutive units, cut to n."""
  check(n >= 1, "block_resample_indices", "n >= 1", n)
  block = max(1, min(block, n))
  blocks = -(-n // block)
  starts = rng.integers(0, n - block + 1, size=(resamples, blocks))
  return (starts[:, :, None] + np.arange(block)).reshape(resamples, blocks * block)[:, :n]


def bits_per_byte(nll: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
  """Bits per byte along the last axis (sums of nats over sums of bytes)."""
  return nll.sum(axis=-1) / (math.log(2) * nbytes.sum(axis=-1))


STATISTICS = {
    # One side: its bits per byte.
    "bpb": lambda a, b: a,
    # Two sides: a - b, in bits per byte.
    "difference": lambda a, b: a - b,
    # Two sides: a / b - 1 (relative change of a over b).
    "relative": lambda a, b: a / b - 1.0,
}


def interval(units: Units, statistic: str = "difference", *, block: int = DEFAULT_BLOCK,
             resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
  """Paired moving-block bootstrap percentile interval of ``statistic`` over ``units`` (blocks of
  ``block`` units, shortened so that there are at least MIN_BLOCKS of them)."""
  check(statistic in STATISTICS, "interval statistic", f"one of {sorted(STATISTICS)}", statistic)
  check(0 < level < 1, "interval", "level in (0, 1)", level)
  sides = units.nll.shape[0]
  check(sides == (1 if statistic == "bpb" else 2), "interval", f"sides for {statistic!r}", sides)
  stat = STATISTICS[statistic]

  def of(nll, nbytes):
    values = bits_per_byte(nll, nbytes)
    return stat(values[0], values[-1])

  estimate = float(of(units.nll, units.bytes))
  n = units.nll.shape[1]
  block = max(1, min(block, n // MIN_BLOCKS))
  rng = np.random.default_rng(seed)
  index = block_resample_indices(n, block, resamples, rng)
  draws = of(units.nll[:, index], units.bytes[:, index])  # [resamples]
  tail = (1 - level) / 2
  low, high = np.quantile(draws, [tail, 1 - tail])
  return Interval(estimate=estimate, low=float(low), high=float(high), level=level)


def row_interval(row_a: dict, row_b: dict | None = None, statistic: str | None = None,
                 **kwargs) -> Interval | None:
  """The interval of one row (bits per byte) or of a paired contrast; None without per-window losses."""
  rows = (row_a,) if row_b is None else (row_a, row_b)
  if not all(has_windows(r) for r in rows):
    return None
  units = aligned_units(*rows)
  if units.nll.shape[1] < MIN_UNITS:
    return None
  return interval(units, statistic or ("bpb" if row_b is None else "difference"), **kwargs)


def verdict(found: Interval | None, threshold: float, *, below: bool = True) -> str:
  """'agrees' when the whole interval clears the threshold on the rule's side, 'disagrees' when it
  lies wholly on the other side, otherwise (or with no interval) 'inconclusive'."""
  if found is None:
    return "inconclusive"
  if below:
    return "agrees" if found.high < threshold else "disagrees" if found.low > threshold else "inconclusive"
  return "agrees" if found.low > threshold else "disagrees" if found.high < threshold else "inconclusive"
