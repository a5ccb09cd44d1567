"""The real-model study's claims: each a rule fixed before the run, citing the paper's contrast,
judged by a 95% paired block-bootstrap interval (perplexity) or Wilson / Newcombe intervals
for proportions (retrieval: a bootstrap over a few prompts that all agree has zero width). Anything the interval does not settle is "inconclusive"; a claim whose rows are
missing (a method or length the config left out) is "untestable", with the reason.

Perplexity contrasts are in bits per byte over 256-token blocks of the same tokens
(``rope_lab.study.statistics``), so the text's own difficulty cancels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rope_lab import results as results_lib
from rope_lab.study import statistics
from rope_lab.study.statistics import Interval, Units

UNTESTABLE = "untestable"
PI_PAPER = "Chen et al. 2023 (Position Interpolation)"
YARN_PAPER = "Peng et al. 2023 (YaRN)"
SELF_EXTEND_PAPER = "Jin et al. 2024 (SelfExtend, LLM Maybe LongLM)"
PASSKEY_PAPER = "Mohtashami & Jaggi 2023 (passkey retrieval); " + PI_PAPER
EXTENSIONS = ("pi", "ntk", "yarn", "self_extend")  # the methods the 'hold' claim covers, by label


@dataclasses.dataclass(frozen=True)
class Claim:
  claim: str
  source: str
  rule: str
  measured: str
  verdict: str


def _units_by_position(row: dict, start: int, end: int) -> Units:
  w = row["windows"]
  keep = [i for i, s in enumerate(w["start"]) if start <= s < end]
  return Units(nll=np.asarray([[w["nll"][i] for i in keep]], np.float64),
               bytes=np.asarray([[w["bytes"][i] for i in keep]], np.float64))


def _paired(a: Units, b: Units) -> Units:
  return Units(nll=np.concatenate([a.nll, b.nll]), bytes=np.concatenate([a.bytes, b.bytes]))


def bootstrap(units: Units, statistic: str, cfg) -> Interval:
  """The study's interval: moving blocks of about n^(1/3) consecutive units (the usual rate;
  a fixed block as long as a short row would resample nothing)."""
  block = max(1, round(units.nll.shape[1] ** (1 / 3)))
  return statistics.interval(units, statistic, block=block, resamples=cfg.resamples, seed=cfg.seed)


def _verdict(found: Interval, threshold: float = 0.0, *, below: bool = True) -> str:
  return statistics.verdict(found, threshold, below=below)


class Rows:
  def __init__(self, rows, cfg, training_length: int):
    self.rows, self.cfg, self.training_length = rows, cfg, training_length

  def ppl(self, method: str, length: int, document: str):
    found = results_lib.select(self.rows, kind="perplexity", method=method, length=length, document=document)
    return found[0] if found else None

  def retrieval(self, kind: str, method: str, inside: bool):
    rows = results_lib.select(self.rows, kind=kind, method=method)
    return [r for r in rows if (r["length"] <= self.training_length) == inside]


def _pooled_tail_units(rows: Rows, method: str, start: int, end: int) -> Units | None:
  parts = []
  for doc in rows.cfg.documents:
    row = rows.ppl(method, rows.cfg.max_length, doc)
    if row is None:
      return None
    parts.append(_units_by_position(row, start, end))
  return Units(nll=np.concatenate([p.nll for p in parts], axis=1), bytes=np.concatenate([p.bytes for p in parts], axis=1))


def rope_rises(rows: Rows) -> Claim:
  n, top = rows.training_length, rows.cfg.max_length
  claim = f"RoPE's loss rises beyond the {n}-token training length"
  source = f"{PI_PAPER}, Fig. 1/Table 1: extrapolating past the training window without interpolation fails"
  span = top - n
  rule = (f"bits/byte of tokens at positions [{n}, {top}) minus that of positions [{n - span}, {n}) under RoPE, "
          "blocks paired in order, all documents pooled: agrees if the 95% interval lies above 0")
  if span <= 0 or n - span < 0:
    return Claim(claim, source, rule, f"no lengths beyond {n} (or too far beyond to compare)", UNTESTABLE)
  after, before = _pooled_tail_units(rows, "rope", n, top), _pooled_tail_units(rows, "rope", n - span, n)
  if after is None or before is None:
    return Claim(claim, source, rule, f"no RoPE row at {top}", UNTESTABLE)
  found = bootstrap(_paired(after, before), "difference", rows.cfg)
  return Claim(claim, source, rule, f"{found.format()} bits/byte", _verdict(found, below=False))


def extensions_hold(rows: Rows) -> list[Claim]:
  n, top = rows.training_length, rows.cfg.max_length
  out = []
  rope = _pooled_tail_units(rows, "rope", n, top)
  for label in EXTENSIONS:
    claim = f"{label} keeps the loss beyond {n} tokens below RoPE's, to {top}"
    source = f"{YARN_PAPER}, Table 1 and Fig. 2; {SELF_EXTEND_PAPER}, Table 1 (training-free extension holds perplexity)"
    rule = (f"bits/byte of {label} minus RoPE on the same tokens at positions [{n}, {top}), paired blocks: agrees "
            "if the 95% interval lies below 0")
    mine = _pooled_tail_units(rows, label, n, top)
    if rope is None or mine is None or top <= n:
      out.append(Claim(claim, source, rule, f"no {label} or RoPE rows beyond {n}", UNTESTABLE))
      continue
    found = bootstrap(_paired(mine, rope), "difference", rows.cfg)
    out.append(Claim(claim, source, rule, f"{found.format()} bits/byte", _verdict(found)))
  return out


def yarn_order(rows: Rows) -> Claim:
  top = rows.cfg.max_length
  claim = f"At {top} tokens YaRN < NTK-aware < PI in perplexity"
  source = f"{YARN_PAPER}, Table 1 (Llama-2 at 10K tokens: PI s=2 8.07, NTK 6.24, YaRN 6.04)"
  rule = ("bits/byte over the whole window, YaRN minus NTK and NTK minus PI, paired blocks, documents pooled: agrees "
          "if both 95% intervals lie below 0, disagrees if either lies above 0")
  units = {label: _pooled_tail_units(rows, label, 0, top) for label in ("yarn", "ntk", "pi")}
  if any(u is None for u in units.values()):
    return Claim(claim, source, rule, "a row of yarn, ntk or pi is missing", UNTESTABLE)
  first = bootstrap(_paired(units["yarn"], units["ntk"]), "difference", rows.cfg)
  second = bootstrap(_paired(units["ntk"], units["pi"]), "difference", rows.cfg)
  verdicts = {_verdict(first), _verdict(second)}
  verdict = "disagrees" if "disagrees" in verdicts else "agrees" if verdicts == {"agrees"} else "inconclusive"
  return Claim(claim, source, rule, f"YaRN - NTK {first.format()}; NTK - PI {second.format()}", verdict)


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: int, n: int) -> Interval:
  """Wilson score 95% interval of a proportion (Wilson 1927). A percentile bootstrap over a
  handful of prompts that all agree resamples nothing and gives a zero-width interval;
  Wilson's does not (2 of 2 correct: [0.34, 1])."""
  p = successes / n
  centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
  half = Z95 * np.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n ** 2)) / (1 + Z95 ** 2 / n)
  return Interval(p, float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def newcombe(successes_a: int, n_a: int, successes_b: int, n_b: int) -> Interval:
  """95% interval of p_a - p_b from the two Wilson intervals (Newcombe 1998, method 10)."""
  a, b = wilson(successes_a, n_a), wilson(successes_b, n_b)
  diff = a.estimate - b.estimate
  low = diff - np.sqrt((a.estimate - a.low) ** 2 + (b.high - b.estimate) ** 2)
  high = diff + np.sqrt((a.high - a.estimate) ** 2 + (b.estimate - b.low) ** 2)
  return Interval(diff, float(max(-1.0, low)), float(min(1.0, high)))


def passkey_collapses(rows: Rows) -> Claim:
  n = rows.training_length
  claim = f"Under RoPE, passkey retrieval works inside {n} tokens and collapses beyond"
  source = f"{PASSKEY_PAPER}: retrieval fails past the training length without extension"
  rule = ("accuracy inside minus beyond the training length (greedy generation, all depths pooled), Newcombe's "
          "95% interval for a difference of proportions: agrees if it lies above 0.5")
  inside, beyond = rows.retrieval("passkey", "rope", True), rows.retrieval("passkey", "rope", False)
  if not inside or not beyond:
    return Claim(claim, source, rule, "passkey rows inside and beyond the training length are needed", UNTESTABLE)
  a = [r["metrics"]["correct"] for r in inside]
  b = [r["metrics"]["correct"] for r in beyond]
  found = newcombe(sum(a), len(a), sum(b), len(b))
  measured = (f"inside {np.mean(a):.2f} (n={len(a)}), beyond {np.mean(b):.2f} (n={len(b)}); "
              f"difference {found.format(2)}")
  return Claim(claim, source, rule, measured, _verdict(found, 0.5, below=False))


def passkey_restored(rows: Rows) -> list[Claim]:
  n = rows.training_length
  out = []
  for label in [m for m in rows.cfg.retrieval_methods if m != "rope"]:
    claim = f"{label} restores passkey retrieval beyond {n} tokens"
    source = f"{SELF_EXTEND_PAPER}: full passkey accuracy on Llama-2 at 4x its training length, training-free"
    rule = (f"accuracy of {label} beyond the training length (all depths pooled), Wilson 95% interval: agrees if "
            "it lies above 0.9, disagrees if it lies below 0.9")
    beyond = rows.retrieval("passkey", label, False)
    if not beyond:
      out.append(Claim(claim, source, rule, "no passkey rows beyond the training length", UNTESTABLE))
      continue
    correct = [r["metrics"]["correct"] for r in beyond]
    found = wilson(sum(correct), len(correct))
    out.append(Claim(claim, source, rule, f"{found.format(2)} (n={len(correct)})", _verdict(found, 0.9, below=False)))
  return out


def all_claims(rows, cfg, training_length: int) -> list[Claim]:
  r = Rows(rows, cfg, training_length)
  return [rope_rises(r), *extensions_hold(r), yarn_order(r), passkey_collapses(r), *passkey_restored(r)]
