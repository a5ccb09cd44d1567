"""The study's claims: each a rule fixed before the run, applied per seed to the stored numbers.

A claim cites the paper's own contrast and states its rule; :func:`evaluate_claims` applies
every rule in CLAIMS to the perplexity rows of the evaluation split. A claim "agrees" only
if its rule holds in every seed and scale it compares, "disagrees" if in none, "partly"
otherwise. Rows are joined by plan id; labels appear only in the measured text. A new
claim is one function here, added to CLAIMS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from rope_lab import results as results_lib
from rope_lab.evaluate.plans import DYNAMIC_NTK, DYNAMIC_YARN, PI_MATCHED, ROPE, TRAINED, scaled_id

METRIC = "bits_per_byte"


class Numbers:
  """Per-seed bits-per-byte lookups over the perplexity rows of one split, by plan id."""

  def __init__(self, rows, split: str, train_length: int):
    self.rows = results_lib.select(rows, kind="perplexity", split=split)
    self.train_length = train_length
    self._labels = {r["plan_id"]: r["plan"] for r in self.rows}

  def label(self, plan_id: str) -> str:
    return self._labels.get(plan_id, plan_id)

  def seeds(self, scale: float, **criteria) -> dict[int, float]:
    length = int(round(scale * self.train_length))
    return {r["seed"]: r["metrics"][METRIC] for r in results_lib.select(self.rows, length=length, **criteria)}

  def summary(self, scale: float, **criteria) -> results_lib.Summary | None:
    length = int(round(scale * self.train_length))
    return results_lib.summarize(results_lib.select(self.rows, length=length, **criteria), METRIC)

  def text(self, scale: float, **criteria) -> str:
    summary = self.summary(scale, **criteria)
    return "n/a" if summary is None else f"{summary.format(3)} (n={summary.n})"

  def best_text(self, scale: float, plan_ids, run_kind: str) -> str:
    """The lowest mean among ``plan_ids`` on runs of ``run_kind``: '<label> <mean ± std>'."""
    options = [(self.summary(scale, plan_id=p, run_kind=run_kind), p) for p in plan_ids]
    options = [(s, p) for s, p in options if s is not None]
    if not options:
      return "n/a"
    summary, plan_id = min(options, key=lambda o: o[0].mean)
    return f"{self.label(plan_id)} {summary.format(3)}"


def all_seeds(pairs: Sequence[tuple[dict, dict]], better) -> tuple[int, int]:
  """(seeds where better(a, b) holds, seeds compared) over (a by seed, b by seed) pairs."""
  holds = total = 0
  for a, b in pairs:
    for seed in set(a) & set(b):
      total += 1
      holds += bool(better(a[seed], b[seed]))
  return holds, total


def verdict(holds: int, total: int) -> str:
  if total == 0:
    return "not measured"
  if holds == total:
    return "agrees"
  return "disagrees" if holds == 0 else "partly"


def best_of(*by_seed: dict) -> dict:
  """Per seed, the lowest value among the dicts (seeds present in all of them)."""
  return {k: min(d[k] for d in by_seed) for k in set.intersection(*(set(d) for d in by_seed))}


def seeds_text(by_seed: dict) -> str:
  if not by_seed:
    return "n/a"
  values = list(by_seed.values())
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return f"{np.mean(values):.3f}" + (f" ± {std:.3f}" if len(values) > 1 else "") + f" (n={len(values)})"


@dataclasses.dataclass(frozen=True)
class Claim:
  claim: str
  source: str
  rule: str
  measured: str
  verdict: str


class Context:
  """What every claim reads: the numbers, the config, and the lookups the claims share."""

  def __init__(self, rows, cfg):
    self.n = Numbers(rows, cfg.eval_split, cfg.train_length)
    self.cfg = cfg
    self.s, self.a = cfg.static_scale, cfg.finetune_scale
    self.scales = sorted(cfg.eval_scales)
    self.inside = [x for x in self.scales if 1 < x <= self.s]
    self.beyond = [x for x in self.scales if x > self.s]

  def base(self, plan_id: str, scale: float) -> dict[int, float]:
    """Per seed, a base model under a zero-shot plan."""
    return self.n.seeds(scale, plan_id=plan_id, run_kind="base")

  def base_text(self, plan_id: str, scale: float) -> str:
    return self.n.text(scale, plan_id=plan_id, run_kind="base")

  def static(self, method: str) -> str:
    """The id of a static method set for the study's target scale s."""
    return scaled_id(method, self.s)

  def finetuned(self, method: str, scale: float) -> dict[int, float]:
    """Per seed, the fine-tune of ``method`` at finetune_scale under its own encoding."""
    return self.n.seeds(scale, run_kind="finetune", method=method, plan_id=TRAINED, train_scale=self.a)

  def finetuned_text(self, method: str, scale: float) -> str:
    return self.n.text(scale, run_kind="finetune", method=method, plan_id=TRAINED, train_scale=self.a)


CLAIMS: list[Callable[[Context], Claim | None]] = []


def claim(rule: Callable[[Context], Claim | None]):
  CLAIMS.append(rule)
  return rule


@claim
def rope_collapses(c: Context) -> Claim:
  holds, total = all_seeds([(c.base(ROPE, 2), c.base(ROPE, 1))], lambda hi, lo: hi > 1.1 * lo)
  holds4, total4 = all_seeds([(c.base(ROPE, 4), c.base(ROPE, 1))], lambda hi, lo: hi > 1.5 * lo)
  last = c.scales[-1]
  return Claim(
      "Plain RoPE extrapolation collapses beyond the training length", "Chen et al. 2023 (PI); Press et al. 2022",
      "RoPE at 2x > 1.1 x RoPE at 1x, and at 4x > 1.5 x, in every seed",
      f"RoPE 1x {c.base_text(ROPE, 1)}; 2x {c.base_text(ROPE, 2)}; 4x {c.base_text(ROPE, 4)}; "
      f"{last}x {c.base_text(ROPE, last)}",
      verdict(holds + holds4, total + total4))


@claim
def pi_stable_but_worse(c: Context) -> Claim:
  s, pi = c.s, c.static("pi")
  worse = all_seeds([(c.base(pi, 1), c.base(ROPE, 1))], lambda p, r: p > r)
  stable = all_seeds([(c.base(pi, x), c.base(pi, 1)) for x in c.inside], lambda p, p1: p <= 1.1 * p1)
  return Claim(
      "PI without fine-tuning is stable but worse inside the original length", "Chen et al. 2023",
      f"PI s={s:g} at 1x > RoPE at 1x, and PI at every scale <= {s:g}x within 10% of its 1x value",
      f"PI 1x {c.base_text(pi, 1)} vs RoPE 1x {c.base_text(ROPE, 1)}; PI {s:g}x {c.base_text(pi, s)}",
      verdict(worse[0] + stable[0], worse[1] + stable[1]))


@claim
def pi_finetune_extends(c: Context) -> Claim:
  a = c.a
  extends = all_seeds([(c.finetuned("pi", x), c.base(ROPE, 1)) for x in c.scales if x <= a],
                      lambda f, r: f <= 1.05 * r)
  return Claim(
      f"After a short fine-tune PI extends to about s times the original length (s={a})", "Chen et al. 2023",
      f"fine-tuned PI at every scale <= {a}x within 5% of RoPE at 1x",
      f"PI-FT 1x {c.finetuned_text('pi', 1)}; {a}x {c.finetuned_text('pi', a)}; "
      f"{2 * a}x {c.finetuned_text('pi', 2 * a)}; zero-shot PI {a}x {c.base_text(c.static('pi'), a)}",
      verdict(*extends))


@claim
def ntk_beats_pi(c: Context) -> Claim:
  s, pi, ntk = c.s, c.static("pi"), c.static("ntk")
  static = all_seeds([(c.base(ntk, x), c.base(pi, x)) for x in c.inside], lambda u, v: u < v)
  matched = all_seeds([(c.base(DYNAMIC_NTK, x), c.base(PI_MATCHED, x)) for x in c.scales if x > 1],
                      lambda u, v: u < v)
  return Claim(
      "NTK-aware scaling beats PI zero-shot", "bloc97 2023; Peng et al. 2023",
      f"NTK s={s:g} < PI s={s:g} at every scale in {c.inside}; NTK with alpha = L/L0 < PI with s = L/L0 at every "
      "scale > 1; per seed",
      f"static: {static[0]}/{static[1]} seed-scales; length-matched: {matched[0]}/{matched[1]}. "
      f"{s:g}x: NTK {c.base_text(ntk, s)} vs PI {c.base_text(pi, s)}",
      verdict(static[0] + matched[0], static[1] + matched[1]))


@claim
def yarn_beats_both(c: Context) -> Claim:
  a, pi, ntk, yarn = c.a, c.static("pi"), c.static("ntk"), c.static("yarn")
  zs = all_seeds([(c.base(yarn, x), best_of(c.base(ntk, x), c.base(pi, x))) for x in c.inside]
                 + [(c.base(DYNAMIC_YARN, x), best_of(c.base(DYNAMIC_NTK, x), c.base(PI_MATCHED, x)))
                    for x in c.scales if x > 1], lambda u, v: u < v)
  tuned = all_seeds([(c.finetuned("yarn", x), c.finetuned("pi", x)) for x in c.scales if x <= a],
                    lambda u, v: u < v)
  return Claim(
      "YaRN beats both PI and NTK", "Peng et al. 2023",
      "zero-shot: YaRN < min(NTK, PI) at the static and length-matched settings; fine-tuned: YaRN-FT < PI-FT "
      f"at every scale <= {a}x; per seed",
      f"zero-shot {zs[0]}/{zs[1]}, fine-tuned {tuned[0]}/{tuned[1]} seed-scales. {a}x fine-tuned: YaRN "
      f"{c.finetuned_text('yarn', a)} vs PI {c.finetuned_text('pi', a)}",
      verdict(zs[0] + tuned[0], zs[1] + tuned[1]))


@claim
def dynamic_yarn_most_graceful(c: Context) -> Claim:
  zero_shot = sorted({r["plan_id"] for r in c.n.rows if r["run_kind"] == "base"}, key=c.n.label)
  others = [p for p in zero_shot if p != DYNAMIC_YARN]
  ranks = []
  for x in c.beyond:
    by_plan = {p: c.base(p, x) for p in others}
    ranks.append((c.base(DYNAMIC_YARN, x), best_of(*[v for v in by_plan.values() if v])))
  graceful = all_seeds(ranks, lambda u, v: u < v)
  last = c.scales[-1]
  return Claim(
      "Dynamic YaRN degrades most gracefully zero-shot", "Peng et al. 2023",
      f"Dynamic YaRN lowest of all zero-shot encodings at every scale > {c.s:g}x, per seed",
      f"{graceful[0]}/{graceful[1]} seed-scales; {last}x: Dynamic YaRN {c.base_text(DYNAMIC_YARN, last)}, "
      f"next best {c.n.best_text(last, others, 'base')}",
      verdict(*graceful))


@claim
def giraffe_evaluates_above_a(c: Context) -> Claim:
  def grid(t, b):
    kind = {"run_kind": "finetune"} if t > 1 else {"run_kind": "base"}
    return c.n.seeds(b, plan_id=PI_MATCHED, train_scale=t, **kind)
  cells = [(t, 2 * t) for t in c.cfg.grid_train_scales if 2 * t in c.scales]
  well = all_seeds([(grid(t, b), grid(t, t)) for t, b in cells], lambda u, v: u <= 1.1 * v)
  better = all_seeds([(grid(t, b), grid(1, b)) for t, b in cells], lambda u, v: u < v)
  detail = "; ".join(f"a={t}: b={t} {seeds_text(grid(t, t))}, b={b} {seeds_text(grid(t, b))}" for t, b in cells)
  return Claim(
      "A model fine-tuned at scale a evaluates well at scales somewhat above a", "Pal et al. 2023 (Giraffe)",
      "PI-FT at a, evaluated at b = 2a with factor 2a: within 10% of its value at b = a and below the "
      "zero-shot base at 2a; per seed",
      f"{well[0]}/{well[1]} within 10%, {better[0]}/{better[1]} below zero-shot. {detail}",
      verdict(well[0] + better[0], well[1] + better[1]))


@claim
def rope_extends_better_than_ape(c: Context) -> Claim | None:
  ape_rows = results_lib.select(c.n.rows, run_kind="ape")
  if not ape_rows:
    return None
  ape_plans = sorted({r["plan_id"] for r in ape_rows}, key=c.n.label)
  rope_plans = [DYNAMIC_NTK, DYNAMIC_YARN, PI_MATCHED]
  longer = [x for x in c.scales if x > 1]
  pairs = [(best_of(*[c.base(p, x) for p in rope_plans]),
            best_of(*[c.n.seeds(x, plan_id=p, run_kind="ape") for p in ape_plans])) for x in longer]
  rope_wins = all_seeds(pairs, lambda r, p: r < p)
  return Claim(
      "Training-free extension works better for RoPE models than for APE models", "Zhu et al. 2024 (LongEmbed)",
      "best of Dynamic NTK / Dynamic YaRN / PI s=L/L0 on the RoPE model < best APE extension, at every "
      "scale > 1 (the APE seed)",
      f"{rope_wins[0]}/{rope_wins[1]} seed-scales; {longer[-1]}x: APE best "
      f"{c.n.best_text(longer[-1], ape_plans, 'ape')}, RoPE best {c.n.best_text(longer[-1], rope_plans, 'base')}",
      verdict(*rope_wins))


def evaluate_claims(rows, cfg) -> list[Claim]:
  """Every claim in CLAIMS that the rows can speak to, in order."""
  context = Context(rows, cfg)
  return [c for c in (rule(context) for rule in CLAIMS) if c is not None]

