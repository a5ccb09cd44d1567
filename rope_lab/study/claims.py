"""The study's claims: one rule per paper's own contrast, fixed before the run, judged by an interval.

Each claim is one function in CLAIMS. It names two sets of perplexity rows (per seed) on the
evaluation split, a statistic of them (a difference or a relative change of bits per byte),
and a threshold from the rule. The measured value is the statistic over all seeds' windows
pooled; its 95% interval is a paired block bootstrap over those windows
(rope_lab.study.statistics). The verdict is "agrees" or "disagrees" only when the interval
clears the threshold; otherwise, or when the rows carry no per-window losses (rows written
before they were stored), it is "inconclusive". Per-seed values are shown beside the interval.
A claim that the rows cannot speak to is "untestable", with the reason.

The citation text (paper, and the table or section the contrast comes from) is part of each rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from rope_lab import results as results_lib
from rope_lab.evaluate.plans import PI_MATCHED, ROPE, TRAINED, scaled_id
from rope_lab.study import statistics

METRIC = "bits_per_byte"
UNTESTABLE = "untestable"

PI_PAPER = "Chen et al. 2023, Extending Context Window of LLMs via Positional Interpolation"
YARN_PAPER = "Peng et al. 2023, YaRN: Efficient Context Window Extension of LLMs"
GIRAFFE_PAPER = "Pal et al. 2023, Giraffe: Adventures in Expanding Context Lengths in LLMs"
LONGEMBED_PAPER = "Zhu et al. 2024, LongEmbed: Extending Embedding Models for Long Context Retrieval"
POSE_PAPER = "Zhu et al. 2023, PoSE: Efficient Context Window Extension of LLMs via Positional Skip-wise Training"
LONGLORA_PAPER = "Chen et al. 2023, LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models"
XPOS_PAPER = "Sun et al. 2022, A Length-Extrapolatable Transformer"
LONGROPE_PAPER = "Ding et al. 2024, LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens"
ICP_PAPER = "Shi et al. 2023, In-Context Pretraining: Language Modeling Beyond Document Boundaries"
LLAMA4_SOURCE = ("Meta 2025, Llama 4 model card and release notes (iRoPE: NoPE attention layers interleaved with "
                 "RoPE layers for length generalisation; a design statement, no table of results)")

# The labels of the declared runs the claims below read (configs/study.py declares them). A claim
# whose runs are not declared finds no rows and is "untestable".
PI, YARN, POWER, TRUNCATED, POSE, LONGLORA = "pi", "yarn", "power", "truncated", "pose", "longlora"
XPOS, NOPE_LAYERS, ICP_RANDOM, ICP_IN_CONTEXT = "xpos", "nope4", "icp_random", "icp_in_context"


@dataclasses.dataclass(frozen=True)
class Claim:
  claim: str
  source: str  # paper and table / section
  rule: str
  measured: str  # the value with its interval (or why there is none), per-seed values, labels
  verdict: str   # agrees / disagrees / inconclusive / untestable
  value: float | None = None  # the statistic (pooled over seeds), in the rule's unit
  interval: statistics.Interval | None = None
  threshold: float | None = None
  statistic: str = "difference"
  below: bool = True  # the rule holds when the value is below the threshold


def _statistic_of(statistic: str, a: float, b: float) -> float:
  return a - b if statistic == "difference" else a / b - 1.0


class Context:
  """What every claim reads: the evaluation split's perplexity rows of each seed, and the config."""

  def __init__(self, rows, cfg):
    self.all_rows = rows
    self.rows = results_lib.select(rows, kind="perplexity", split=cfg.eval_split)
    self.cfg = cfg
    self.s, self.a = cfg.static_scale, cfg.finetune_scale
    self.scales = sorted(cfg.eval_scales)
    self._labels = {r["plan_id"]: r["plan"] for r in self.rows}

  def label(self, plan_id: str) -> str:
    return self._labels.get(plan_id, plan_id)

  def length(self, scale: float) -> int:
    return int(round(scale * self.cfg.train_length))

  def by_seed(self, scale: float, **criteria) -> dict[int, dict]:
    """Per seed, the row at ``scale`` matching ``criteria`` (the first by run name if several)."""
    found = {}
    for r in sorted(results_lib.select(self.rows, length=self.length(scale), **criteria), key=lambda r: r["run"]):
      found.setdefault(r["seed"], r)
    return found

  def base(self, plan_id: str, scale: float) -> dict[int, dict]:
    return self.by_seed(scale, plan_id=plan_id, run_kind="base")

  def finetuned(self, method: str, train_scale: float, scale: float, plan_id: str = TRAINED) -> dict[int, dict]:
    return self.by_seed(scale, run_kind="finetune", method=method, plan_id=plan_id, train_scale=train_scale)

  def variant(self, label: str, scale: float) -> dict[int, dict]:
    """Per seed, the declared pretraining variant ``label`` as trained, at ``scale``."""
    return self.by_seed(scale, run_kind="variant", method=label, plan_id=TRAINED)

  def beyond(self) -> float:
    """The first evaluation scale beyond the training length (2x when measured)."""
    return min([s for s in self.scales if s > 1], default=2)

  def zero_shot_plans(self) -> list[str]:
    return sorted({r["plan_id"] for r in self.rows if r["run_kind"] == "base"})


def contrast(claim: str, source: str, rule: str, a: dict[int, dict], b: dict[int, dict], *, statistic: str,
             threshold: float, below: bool = True, names: tuple[str, str] = ("a", "b")) -> Claim:
  """The claim judged on rows ``a`` vs ``b`` (paired per seed): value, interval, verdict, text."""
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return Claim(claim, source, rule, "no rows for this contrast", UNTESTABLE, threshold=threshold,
                 statistic=statistic, below=below)
  per_seed = {s: _statistic_of(statistic, a[s]["metrics"][METRIC], b[s]["metrics"][METRIC]) for s in seeds}
  found, why_none = None, statistics.NO_WINDOWS
  if all(statistics.has_windows(r) for s in seeds for r in (a[s], b[s])):
    pooled = [statistics.aligned_units(a[s], b[s]) for s in seeds]
    units = statistics.Units(nll=np.concatenate([u.nll for u in pooled], axis=1),
                             bytes=np.concatenate([u.bytes for u in pooled], axis=1))
    if units.nll.shape[1] >= statistics.MIN_UNITS:
      found = statistics.interval(units, statistic)
    else:
      why_none = statistics.too_few_units(units.nll.shape[1])
  value = found.estimate if found is not None else float(np.mean(list(per_seed.values())))
  unit = "" if statistic == "difference" else " (relative)"
  head = (f"{value:+.3f}{unit} [{found.low:+.3f}, {found.high:+.3f}]" if found is not None
          else f"{value:+.3f}{unit}, {why_none}")
  seeds_text = ", ".join(f"s{s} {v:+.3f}" for s, v in per_seed.items())
  sides = (f"{names[0]} {np.mean([a[s]['metrics'][METRIC] for s in seeds]):.3f} vs {names[1]} "
           f"{np.mean([b[s]['metrics'][METRIC] for s in seeds]):.3f} bits/byte")
  measured = f"{head}; per seed: {seeds_text}; {sides} (n={len(seeds)})"
  return Claim(claim, source, rule, measured, statistics.verdict(found, threshold, below=below), value=value,
               interval=found, threshold=threshold, statistic=statistic, below=below)


CLAIMS: list[Callable[[Context], Claim]] = []


def claim(rule: Callable[[Context], Claim]):
  CLAIMS.append(rule)
  return rule


# Fine-tuned models: "within x%" of themselves / of the base.
WITHIN = 0.05


@claim
def pi_zero_shot_beats_rope(c: Context) -> Claim:
  s, pi = c.s, scaled_id("pi", c.s)
  return contrast(
      f"PI at s={s:g} beats plain RoPE at s x L, zero-shot", f"{PI_PAPER}, §2.2-2.3 and Figure 2 (extrapolation "
      "vs interpolation before fine-tuning)",
      f"bits/byte of PI s={s:g} minus RoPE, both at {s:g}x the training length: interval below 0",
      c.base(pi, s), c.base(ROPE, s), statistic="difference", threshold=0.0,
      names=(c.label(pi), c.label(ROPE)))


def _extension(c: Context, method: str, name: str, source: str) -> Claim:
  a = c.a
  return contrast(
      f"{name} fine-tuned at {a}x L is as good at {a}x L as at L (extension)", source,
      f"relative change of the {name}-fine-tuned model's bits/byte from 1x to {a}x: interval below "
      f"+{100 * WITHIN:g}%", c.finetuned(method, a, a), c.finetuned(method, a, 1), statistic="relative",
      threshold=WITHIN, names=(f"{a}x", "1x"))


def _retention(c: Context, method: str, name: str, source: str) -> Claim:
  return contrast(
      f"{name} fine-tuning at {c.a}x L keeps the quality at L (retention)", source,
      f"relative change of bits/byte at 1x from the base model (RoPE) to the {name}-fine-tuned model: interval "
      f"below +{100 * WITHIN:g}%", c.finetuned(method, c.a, 1), c.base(ROPE, 1), statistic="relative",
      threshold=WITHIN, names=(f"{name}-FT", "base"))


@claim
def pi_finetune_extends(c: Context) -> Claim:
  return _extension(c, PI, "PI", f"{PI_PAPER}, Table 1 (PG-19 perplexity of PI-fine-tuned models by window)")


@claim
def pi_finetune_retains(c: Context) -> Claim:
  return _retention(c, PI, "PI", f"{PI_PAPER}, §3.4 and Table 4 (original-window quality after extension)")


@claim
def yarn_finetune_extends(c: Context) -> Claim:
  return _extension(c, YARN, "YaRN", f"{YARN_PAPER}, Table 1 (Proof-pile perplexity of PI, NTK and YaRN "
                    "fine-tunes by window)")


@claim
def yarn_finetune_retains(c: Context) -> Claim:
  return _retention(c, YARN, "YaRN", f"{YARN_PAPER}, §4.4 (standard benchmarks against the original model)")


@claim
def yarn_extrapolates_beyond_finetune(c: Context) -> Claim:
  a, b = c.a, 2 * c.a
  return contrast(
      f"YaRN fine-tuned at {a}x L extrapolates to {b}x L", f"{YARN_PAPER}, Table 2 (s=32 fine-tuned on 64k "
      "tokens, perplexity still falling at 128k)",
      f"relative change of the YaRN-fine-tuned model's bits/byte from {a}x to {b}x: interval below "
      f"+{100 * WITHIN:g}%", c.finetuned(YARN, a, b), c.finetuned(YARN, a, a), statistic="relative",
      threshold=WITHIN, names=(f"{b}x", f"{a}x"))


@claim
def giraffe_double_factor(c: Context) -> Claim:
  a, b = c.a, 2 * c.a
  return contrast(
      f"A PI fine-tune at a={a} evaluated at {b}x L is better with factor 2a than with its own a",
      f"{GIRAFFE_PAPER}, §4-5 (linear scaling: evaluating a factor-a fine-tune with factor 2a)",
      f"same fine-tuned model at {b}x: bits/byte with factor {b} minus with factor {a}: interval below 0",
      c.finetuned(c.cfg.grid_finetune, a, b, PI_MATCHED), c.finetuned(c.cfg.grid_finetune, a, b),
      statistic="difference", threshold=0.0, names=(f"factor {b}", f"factor {a}"))


@claim
def longrope_beats_yarn(c: Context) -> Claim:
  """LongRoPE's factors are searched on the first seed's base model (validation documents) and
  applied to every seed's: the paper searches per model, so this is the cheaper protocol."""
  s = c.s
  longrope, yarn = scaled_id("longrope", s), scaled_id("yarn", s)
  return contrast(
      f"LongRoPE's searched factors at its target s x L (s={s:g}) beat YaRN s={s:g}, zero-shot",
      f"{LONGROPE_PAPER}, §2 and Table 2 (perplexity without fine-tuning of PI, NTK and YaRN against "
      "searched per-dimension rescale factors at the target window)",
      f"bits/byte of LongRoPE s={s:g} (factors searched on seed {c.cfg.seeds[0]}'s base model) minus YaRN "
      f"s={s:g}, both at {s:g}x the training length on the same windows: interval below 0",
      c.base(longrope, s), c.base(yarn, s), statistic="difference", threshold=0.0,
      names=(c.label(longrope), c.label(yarn)))


def best_zero_shot(c: Context, scale: float) -> str | None:
  """The zero-shot plan with the lowest mean bits/byte at ``scale`` on the choice split; None when
  nothing was measured there (a baseline picked on the evaluation split would be tuned on it)."""
  pool = results_lib.select(c.all_rows, kind="perplexity", split=c.cfg.choice_split, run_kind="base",
                            length=c.length(scale))
  means = {}
  for r in pool:
    means.setdefault(r["plan_id"], []).append(r["metrics"][METRIC])
  return min(means, key=lambda p: np.mean(means[p])) if means else None


@claim
def giraffe_beats_best_zero_shot(c: Context) -> Claim:
  a, b = c.a, 2 * c.a
  best = best_zero_shot(c, b)
  claim_text = f"The factor-2a PI fine-tune at {b}x L beats the best zero-shot method there"
  source = f"{GIRAFFE_PAPER}, §4-5 (fine-tuned scaling against training-free baselines)"
  rule = (f"bits/byte of the a={a} PI fine-tune with factor {b} minus the best zero-shot encoding at {b}x "
          f"(chosen on {c.cfg.choice_split}): interval below 0")
  if best is None:
    return Claim(claim_text, source, rule,
                 f"no zero-shot rows on {c.cfg.choice_split} at {b}x to choose the best method on "
                 f"(choosing on {c.cfg.eval_split} would tune on the reported documents)",
                 UNTESTABLE, threshold=0.0, statistic="difference", below=True)
  return contrast(claim_text, source, rule, c.finetuned(c.cfg.grid_finetune, a, b, PI_MATCHED), c.base(best, b),
                  statistic="difference", threshold=0.0, names=("fine-tune", c.label(best)))


# ----------------------------------------------------------------------------- declared runs
# Rules fixed before any of these runs were trained. Fine-tunes are compared at the same
# finetune_scale a with the same steps, tokens per step and learning rate; variants with the
# RoPE base models of the same seeds (same model, data and steps).


def _giraffe_basis(c: Context, label: str, name: str) -> Claim:
  a, b = c.a, 2 * c.a
  return contrast(
      f"Giraffe's {name} basis fine-tuned at {a}x L extrapolates to {b}x L better than the PI fine-tune",
      f"{GIRAFFE_PAPER}, §5 results (accuracy beyond the fine-tuned context by scaling method: the truncated "
      "basis extrapolates best, linear scaling degrades)",
      f"at {b}x L (twice the fine-tuning length): bits/byte of the {name}-basis fine-tune minus the PI fine-tune, "
      "each as trained: interval below 0",
      c.finetuned(label, a, b), c.finetuned(PI, a, b), statistic="difference", threshold=0.0,
      names=(f"{name} FT", "PI FT"))


@claim
def giraffe_truncated_extrapolates(c: Context) -> Claim:
  return _giraffe_basis(c, TRUNCATED, "truncated")


@claim
def giraffe_power_extrapolates(c: Context) -> Claim:
  return _giraffe_basis(c, POWER, "power")


def _within_full_finetune(c: Context, label: str, name: str, source: str) -> Claim:
  a = c.a
  return contrast(
      f"{name} fine-tuned at {a}x L is within {100 * WITHIN:g}% of the full-length PI fine-tune at {a}x L", source,
      f"relative change of bits/byte at {a}x L from the full PI fine-tune to the {name} fine-tune: interval "
      f"below +{100 * WITHIN:g}%", c.finetuned(label, a, a), c.finetuned(PI, a, a), statistic="relative",
      threshold=WITHIN, names=(name, "full PI FT"))


@claim
def pose_matches_full_finetune(c: Context) -> Claim:
  return _within_full_finetune(c, POSE, "PoSE", f"{POSE_PAPER}, Tables 1-2 (perplexity of PoSE vs full-length "
                               "fine-tuning at the target window)")


@claim
def longlora_matches_full_finetune(c: Context) -> Claim:
  return _within_full_finetune(c, LONGLORA, "LongLoRA", f"{LONGLORA_PAPER}, Tables 2-3 (perplexity of LongLoRA "
                               "vs full fine-tuning by context length)")


def _variant_beyond(c: Context, label: str, claim_text: str, source: str, name: str) -> Claim:
  b = c.beyond()
  return contrast(
      claim_text.format(b=f"{b:g}"), source,
      f"at {b:g}x L: bits/byte of the {name} model (as trained) minus the RoPE base model of the same seed "
      "under RoPE: interval below 0", c.variant(label, b), c.base(ROPE, b), statistic="difference",
      threshold=0.0, names=(name, "RoPE"))


@claim
def xpos_extrapolates_beyond_rope(c: Context) -> Claim:
  return _variant_beyond(c, XPOS, "A model trained with xPos extrapolates to {b}x L better than one trained with RoPE",
                         f"{XPOS_PAPER}, §4 length-extrapolation experiments (perplexity beyond the training length, "
                         "xPos vs RoPE)", "xPos")


@claim
def nope_layers_extrapolate_beyond_rope(c: Context) -> Claim:
  return _variant_beyond(c, NOPE_LAYERS, "NoPE every 4th layer (iRoPE) extrapolates to {b}x L better than RoPE in "
                         "every layer", LLAMA4_SOURCE, "NoPE-every-4th")


@claim
def in_context_order_lowers_perplexity(c: Context) -> Claim:
  return contrast(
      "Pretraining on related documents in one context lowers perplexity over the full training window",
      f"{ICP_PAPER}, §3.1 (language-modelling perplexity of in-context vs standard pretraining)",
      "at 1x L: relative change of bits/byte from the random-order to the in-context-order model (both "
      "concatenated streams, otherwise identical): interval below 0",
      c.variant(ICP_IN_CONTEXT, 1), c.variant(ICP_RANDOM, 1), statistic="relative", threshold=0.0,
      names=("in-context order", "random order"))


@claim
def longembed_retrieval(c: Context) -> Claim:
  """LongEmbed measured retrieval (passkey / needle), not perplexity: judged on passkey accuracy."""
  source = f"{LONGEMBED_PAPER}, §5 (training-free extension of APE vs RoPE models, on passkey/needle retrieval)"
  # The passkey task the pretraining runs were taught (the classic template is longer than a
  # tiny model's training length and never retrieved); the classic one without a retrieval mix.
  task = "short_passkey" if c.cfg.retrieval_mix else "passkey"
  rule = (f"{task} accuracy beyond the training length: best RoPE-model extension minus best APE-model "
          "extension, interval above 0 (each model must first retrieve 95% inside the training length "
          "under its own encoding)")
  passkey = results_lib.select(c.all_rows, kind=task)
  beyond = [r for r in passkey if r["length"] > c.cfg.train_length]
  ape = [r for r in beyond if r["run_kind"] == "ape"]
  rope = [r for r in beyond if r["run_kind"] == "base"]
  inside = [r for r in passkey if r["length"] <= c.cfg.train_length and r["run_kind"] in ("ape", "base")]
  if not ape or not rope:
    return Claim("Training-free extension works better for RoPE models than for APE models", source, rule,
                 f"no {task} rows for the absolute-position (APE) model", UNTESTABLE, statistic="accuracy", below=False)
  def best(rows):
    """The plan with the highest accuracy pooled over ``rows``' lengths: (plan id, accuracy, examples)."""
    pooled = {}
    for r in rows:
      hits, n = pooled.get(r["plan_id"], (0.0, 0))
      pooled[r["plan_id"]] = (hits + r["metrics"]["accuracy"] * r["metrics"]["examples"], n + r["metrics"]["examples"])
    plan = max(pooled, key=lambda p: pooled[p][0] / pooled[p][1])
    return plan, pooled[plan][0] / pooled[plan][1], pooled[plan][1]

  def retrieves_inside(kind):
    """The model's accuracy inside L under its best plan there. A model retrieves when its own
    encoding does: RoPE for the base models (a static extension such as YaRN s=4 changes the
    positions inside L, so pooling it in would judge the extension, not the model); inside L
    LongEmbed's four extensions leave the APE model's positions unchanged."""
    rows = [r for r in inside if r["run_kind"] == kind]
    return best(rows)[1] if rows else 0.0

  ape_inside, rope_inside = retrieves_inside("ape"), retrieves_inside("base")
  if min(ape_inside, rope_inside) < 0.95:
    return Claim("Training-free extension works better for RoPE models than for APE models", source, rule,
                 f"{task} accuracy inside the training length below 95% (APE model {ape_inside:.2f}, RoPE "
                 f"model {rope_inside:.2f}): a model that cannot retrieve there has nothing to extend",
                 UNTESTABLE, statistic="accuracy", below=False)

  (rp, r_acc, rn), (ap, a_acc, an) = best(rope), best(ape)
  diff = r_acc - a_acc
  half = 1.96 * math.sqrt(r_acc * (1 - r_acc) / rn + a_acc * (1 - a_acc) / an)  # normal approximation
  found = statistics.Interval(diff, diff - half, diff + half)
  return Claim("Training-free extension works better for RoPE models than for APE models", source, rule,
               f"{diff:+.3f} [{found.low:+.3f}, {found.high:+.3f}]; {c.label(rp)} {r_acc:.2f} (n={rn}) vs "
               f"{c.label(ap)} {a_acc:.2f} (n={an})", statistics.verdict(found, 0.0, below=False), value=diff,
               interval=found, threshold=0.0, statistic="accuracy", below=False)


def evaluate_claims(rows, cfg) -> list[Claim]:
  """Every claim in CLAIMS, in order."""
  context = Context(rows, cfg)
  return [rule(context) for rule in CLAIMS]
