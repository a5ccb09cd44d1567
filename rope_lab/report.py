"""report.md from the study's rows and figures: setup, claim-by-claim table, numbers.

Every number in the report is read from results.jsonl; the verdicts follow fixed rules
written next to each claim (stated in the table), applied per seed, so a claim "agrees"
only if it holds in every seed. Numbers are bits per byte on the evaluation split, as
mean ± sample standard deviation over seeds (n in the table).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from rope_lab import results as results_lib

METRIC = "bits_per_byte"


# ----------------------------------------------------------------------------- lookups


class Numbers:
  """Per-seed bits-per-byte lookups over the perplexity rows of one split."""

  def __init__(self, rows, split: str, train_length: int):
    self.rows = results_lib.select(rows, kind="perplexity", split=split)
    self.train_length = train_length

  def seeds(self, scale: float, **criteria) -> dict[int, float]:
    length = int(round(scale * self.train_length))
    return {r["seed"]: r["metrics"][METRIC] for r in results_lib.select(self.rows, length=length, **criteria)}

  def summary(self, scale: float, **criteria) -> results_lib.Summary | None:
    length = int(round(scale * self.train_length))
    return results_lib.summarize(results_lib.select(self.rows, length=length, **criteria), METRIC)

  def text(self, scale: float, **criteria) -> str:
    summary = self.summary(scale, **criteria)
    return "n/a" if summary is None else f"{summary.format(3)} (n={summary.n})"


def _all_seeds(pairs: Sequence[tuple[dict, dict]], better) -> tuple[int, int]:
  """(seeds where better(a, b) holds, seeds compared) over (a by seed, b by seed) pairs."""
  holds = total = 0
  for a, b in pairs:
    for seed in set(a) & set(b):
      total += 1
      holds += bool(better(a[seed], b[seed]))
  return holds, total


def _verdict(holds: int, total: int) -> str:
  if total == 0:
    return "not measured"
  if holds == total:
    return "agrees"
  return "disagrees" if holds == 0 else "partly"


@dataclasses.dataclass(frozen=True)
class Claim:
  claim: str
  source: str
  rule: str
  measured: str
  verdict: str


def claims(rows, cfg) -> list[Claim]:
  n = Numbers(rows, cfg.eval_split, cfg.train_length)
  s, a = cfg.static_scale, cfg.finetune_scale
  base = dict(run_kind="base")
  scales = sorted(cfg.eval_scales)
  inside = [x for x in scales if 1 < x <= s]
  beyond = [x for x in scales if x > s]
  out = []

  rope = lambda x: n.seeds(x, plan="RoPE", **base)
  holds, total = _all_seeds([(rope(2), rope(1))], lambda hi, lo: hi > 1.1 * lo)
  holds4, total4 = _all_seeds([(rope(4), rope(1))], lambda hi, lo: hi > 1.5 * lo)
  out.append(Claim(
      "Plain RoPE extrapolation collapses beyond the training length", "Chen et al. 2023 (PI); Press et al. 2022",
      "RoPE at 2x > 1.1 x RoPE at 1x, and at 4x > 1.5 x, in every seed",
      f"RoPE 1x {n.text(1, plan='RoPE', **base)}; 2x {n.text(2, plan='RoPE', **base)}; "
      f"4x {n.text(4, plan='RoPE', **base)}; {scales[-1]}x {n.text(scales[-1], plan='RoPE', **base)}",
      _verdict(holds + holds4, total + total4)))

  pi = lambda x: n.seeds(x, plan=f"PI s={s:g}", **base)
  worse = _all_seeds([(pi(1), rope(1))], lambda p, r: p > r)
  stable = _all_seeds([(pi(x), pi(1)) for x in inside], lambda p, p1: p <= 1.1 * p1)
  out.append(Claim(
      "PI without fine-tuning is stable but worse inside the original length", "Chen et al. 2023",
      f"PI s={s:g} at 1x > RoPE at 1x, and PI at every scale <= {s:g}x within 10% of its 1x value",
      f"PI 1x {n.text(1, plan=f'PI s={s:g}', **base)} vs RoPE 1x {n.text(1, plan='RoPE', **base)}; "
      f"PI {s:g}x {n.text(s, plan=f'PI s={s:g}', **base)}",
      _verdict(worse[0] + stable[0], worse[1] + stable[1])))

  ft = lambda method, x: {k: v for k, v in n.seeds(x, run_kind="finetune", method=method, plan="trained",
                                                   train_scale=a).items()}
  extends = _all_seeds([(ft("pi", x), rope(1)) for x in scales if x <= a], lambda f, r: f <= 1.05 * r)
  out.append(Claim(
      f"After a short fine-tune PI extends to about s times the original length (s={a})", "Chen et al. 2023",
      f"fine-tuned PI at every scale <= {a}x within 5% of RoPE at 1x",
      f"PI-FT 1x {_ft_text(n, 'pi', 1, a)}; {a}x {_ft_text(n, 'pi', a, a)}; {2 * a}x {_ft_text(n, 'pi', 2 * a, a)}; "
      f"zero-shot PI {a}x {n.text(a, plan=f'PI s={s:g}', **base)}",
      _verdict(*extends)))

  ntk = lambda x: n.seeds(x, plan=f"NTK s={s:g}", **base)
  dntk = lambda x: n.seeds(x, plan="Dynamic NTK", **base)
  pim = lambda x: n.seeds(x, plan="PI s=L/L0", **base)
  static = _all_seeds([(ntk(x), pi(x)) for x in inside], lambda u, v: u < v)
  matched = _all_seeds([(dntk(x), pim(x)) for x in scales if x > 1], lambda u, v: u < v)
  out.append(Claim(
      "NTK-aware scaling beats PI zero-shot", "bloc97 2023; Peng et al. 2023",
      f"NTK s={s:g} < PI s={s:g} at every scale in {inside}; NTK with alpha = L/L0 < PI with s = L/L0 at every "
      "scale > 1; per seed",
      f"static: {static[0]}/{static[1]} seed-scales; length-matched: {matched[0]}/{matched[1]}. "
      f"{s:g}x: NTK {n.text(s, plan=f'NTK s={s:g}', **base)} vs PI {n.text(s, plan=f'PI s={s:g}', **base)}",
      _verdict(static[0] + matched[0], static[1] + matched[1])))

  yarn = lambda x: n.seeds(x, plan=f"YaRN s={s:g}", **base)
  dyarn = lambda x: n.seeds(x, plan="Dynamic YaRN", **base)
  best_of = lambda *ds: {k: min(d[k] for d in ds) for k in set.intersection(*(set(d) for d in ds))}
  zs = _all_seeds([(yarn(x), best_of(ntk(x), pi(x))) for x in inside]
                  + [(dyarn(x), best_of(dntk(x), pim(x))) for x in scales if x > 1], lambda u, v: u < v)
  tuned = _all_seeds([(ft("yarn", x), ft("pi", x)) for x in scales if x <= a], lambda u, v: u < v)
  out.append(Claim(
      "YaRN beats both PI and NTK", "Peng et al. 2023",
      "zero-shot: YaRN < min(NTK, PI) at the static and length-matched settings; fine-tuned: YaRN-FT < PI-FT "
      f"at every scale <= {a}x; per seed",
      f"zero-shot {zs[0]}/{zs[1]}, fine-tuned {tuned[0]}/{tuned[1]} seed-scales. {a}x fine-tuned: YaRN "
      f"{_ft_text(n, 'yarn', a, a)} vs PI {_ft_text(n, 'pi', a, a)}",
      _verdict(zs[0] + tuned[0], zs[1] + tuned[1])))

  zero_shot_plans = sorted({r["plan"] for r in n.rows if r["run_kind"] == "base"})
  ranks = []
  for x in beyond:
    by_plan = {p: n.seeds(x, plan=p, **base) for p in zero_shot_plans}
    best = best_of(*[v for p, v in by_plan.items() if p != "Dynamic YaRN" and v])
    ranks.append((dyarn(x), best))
  graceful = _all_seeds(ranks, lambda u, v: u < v)
  out.append(Claim(
      "Dynamic YaRN degrades most gracefully zero-shot", "Peng et al. 2023",
      f"Dynamic YaRN lowest of all zero-shot encodings at every scale > {s:g}x, per seed",
      f"{graceful[0]}/{graceful[1]} seed-scales; {scales[-1]}x: Dynamic YaRN {n.text(scales[-1], plan='Dynamic YaRN', **base)}, "
      f"next best {_next_best(n, scales[-1], zero_shot_plans)}",
      _verdict(*graceful)))

  grid = lambda t, b: n.seeds(b, plan="PI s=L/L0", train_scale=t, **({"run_kind": "finetune"} if t > 1 else base))
  cells = [(t, 2 * t) for t in cfg.grid_train_scales if 2 * t in scales]
  well = _all_seeds([(grid(t, b), grid(t, t)) for t, b in cells], lambda u, v: u <= 1.1 * v)
  better = _all_seeds([(grid(t, b), grid(1, b)) for t, b in cells], lambda u, v: u < v)
  detail = "; ".join(f"a={t}: b={t} {_text(grid(t, t))}, b={b} {_text(grid(t, b))}" for t, b in cells)
  out.append(Claim(
      "A model fine-tuned at scale a evaluates well at scales somewhat above a", "Pal et al. 2023 (Giraffe)",
      "PI-FT at a, evaluated at b = 2a with factor 2a: within 10% of its value at b = a and below the "
      "zero-shot base at 2a; per seed",
      f"{well[0]}/{well[1]} within 10%, {better[0]}/{better[1]} below zero-shot. {detail}",
      _verdict(well[0] + better[0], well[1] + better[1])))

  ape_rows = results_lib.select(n.rows, run_kind="ape")
  if ape_rows:
    ape_plans = sorted({r["plan"] for r in ape_rows})
    longer = [x for x in scales if x > 1]
    pairs = [(best_of(dntk(x), dyarn(x), pim(x)),
              best_of(*[n.seeds(x, plan=p, run_kind="ape") for p in ape_plans])) for x in longer]
    rope_wins = _all_seeds(pairs, lambda r, p: r < p)
    out.append(Claim(
        "Training-free extension works better for RoPE models than for APE models", "Zhu et al. 2024 (LongEmbed)",
        "best of Dynamic NTK / Dynamic YaRN / PI s=L/L0 on the RoPE model < best APE extension, at every "
        "scale > 1 (the APE seed)",
        f"{rope_wins[0]}/{rope_wins[1]} seed-scales; {longer[-1]}x: APE best {_best_text(n, longer[-1], ape_plans, 'ape')}, "
        f"RoPE best {_best_text(n, longer[-1], ['Dynamic NTK', 'Dynamic YaRN', 'PI s=L/L0'], 'base')}",
        _verdict(*rope_wins)))
  return out


def _text(by_seed: dict) -> str:
  if not by_seed:
    return "n/a"
  values = list(by_seed.values())
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return f"{np.mean(values):.3f}" + (f" ± {std:.3f}" if len(values) > 1 else "") + f" (n={len(values)})"


def _ft_text(n: Numbers, method: str, scale: float, train_scale: int) -> str:
  return n.text(scale, run_kind="finetune", method=method, plan="trained", train_scale=train_scale)


def _next_best(n: Numbers, scale: float, plans) -> str:
  options = [(n.summary(scale, plan=p, run_kind="base"), p) for p in plans if p != "Dynamic YaRN"]
  options = [(s, p) for s, p in options if s is not None]
  if not options:
    return "n/a"
  summary, plan = min(options, key=lambda o: o[0].mean)
  return f"{plan} {summary.format(3)}"


def _best_text(n: Numbers, scale: float, plans, run_kind: str) -> str:
  options = [(n.summary(scale, plan=p, run_kind=run_kind), p) for p in plans]
  options = [(s, p) for s, p in options if s is not None]
  if not options:
    return "n/a"
  summary, plan = min(options, key=lambda o: o[0].mean)
  return f"{plan} {summary.format(3)}"


# ----------------------------------------------------------------------------- tables


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
  lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in body]
  return "\n".join(lines)


def length_table(rows, criteria_by_label: Sequence[tuple[str, dict]], lengths: Sequence[int]) -> str:
  body = []
  for label, criteria in criteria_by_label:
    cells = []
    for length in lengths:
      summary = results_lib.summarize(results_lib.select(rows, length=length, **criteria), METRIC)
      cells.append("" if summary is None else summary.format(3))
    if any(cells):
      n_seeds = max((results_lib.summarize(results_lib.select(rows, **criteria), METRIC) or
                     results_lib.Summary(0, 0, 0, 0, 0, ())).n, 0)
      body.append([label, str(n_seeds)] + cells)
  return markdown_table(["encoding", "seeds"] + [str(n) for n in lengths], body)


def _plans_of(rows) -> list[str]:
  seen = []
  for r in rows:
    if r["plan"] not in seen:
      seen.append(r["plan"])
  return seen


def retrieval_table(rows, kind: str = "passkey") -> str:
  """Accuracy (answer-token accuracy) by length for every (run, encoding), mean over depths and seeds."""
  from rope_lab.plots import run_label  # pylint: disable=g-import-not-at-top
  cells = results_lib.select(rows, kind=kind)
  if not cells:
    return "_not measured_"
  lengths = sorted({r["length"] for r in cells})
  groups: dict[str, list] = {}
  for r in cells:
    groups.setdefault(run_label(r), []).append(r)
  body = []
  for label, group in groups.items():
    row = [label, str(len({r["seed"] for r in group}))]
    for n in lengths:
      at = results_lib.select(group, length=n)
      if not at:
        row.append("")
        continue
      examples = sum(r["metrics"]["examples"] for r in at)
      acc = sum(r["metrics"]["accuracy"] * r["metrics"]["examples"] for r in at) / examples
      tok = sum(r["metrics"]["token_accuracy"] * r["metrics"]["examples"] for r in at) / examples
      row.append(f"{acc:.2f} ({tok:.2f}, n={examples})")
    body.append(row)
  return markdown_table(["model / encoding", "seeds"] + [str(n) for n in lengths], body)


def _timing(rows) -> str:
  timing = results_lib.select(rows, kind="timing")
  if not timing:
    return "_not recorded_"
  phases = timing[-1]["metrics"]
  total = sum(phases.values())
  return ", ".join(f"{k} {v / 60:.1f} min" for k, v in phases.items()) + f"; total {total / 60:.1f} min"


def write_report(rows, figures, cfg, path: str) -> str:
  """Writes report.md next to the figures it links (relative paths) and returns its path."""
  report_dir = os.path.dirname(os.path.abspath(path))
  rel = lambda f: os.path.relpath(f.path, report_dir)
  base_cfg = cfg.base
  ppl = results_lib.select(rows, kind="perplexity", split=cfg.eval_split)
  lengths = sorted({r["length"] for r in ppl})
  commits = sorted({r["commit"] for r in rows})
  train_rows = results_lib.select(rows, kind="train")
  choice = results_lib.select(rows, kind="choice")
  s = cfg.static_scale
  parts = [
      "# Context-extension study",
      "",
      f"Tiny byte-level Llama-style model ({base_cfg.model.n_layers} layers, width {base_cfg.model.d_model}, "
      f"{base_cfg.model.n_heads} heads) trained on `{base_cfg.data.dataset}` at {cfg.train_length} tokens for "
      f"{base_cfg.train.steps} steps (batch {base_cfg.train.global_batch_size}), seeds {list(cfg.seeds)}. "
      f"Perplexity by sliding windows (stride {cfg.stride_fraction:g} x window; each window scores only its new "
      f"tokens) on the first {cfg.eval_doc_tokens} tokens of {cfg.eval_docs} `{cfg.eval_split}` documents, the "
      f"same tokens at every window length. Numbers: bits per byte, mean ± std over seeds. Static methods are "
      f"set for s = {s:g}; the dynamic ones and `PI s=L/L0` follow the window length. Fine-tunes: "
      f"{cfg.finetune_steps} steps ({100 * cfg.finetune_steps / base_cfg.train.steps:.0f}% of pretraining) at "
      f"{cfg.finetune_scale}x with the same tokens per step.",
      "",
      f"Code: {', '.join(commits)}. Run time: {_timing(rows)}.",
  ]
  if choice:
    metrics = choice[-1]["metrics"]
    parts += ["", f"Chosen on `{choice[-1]['split']}` (never on `{cfg.eval_split}`): fine-tuning learning rate "
              f"{metrics['chosen']:g} ({', '.join(f'{k}: {v:.3f} nats' for k, v in metrics.items() if k != 'chosen')})."]
  parts += ["", "## Claims", "", markdown_table(
      ["claim", "source", "rule (per seed)", "measured", "verdict"],
      [[c.claim, c.source, c.rule, c.measured, f"**{c.verdict}**"] for c in claims(rows, cfg)])]
  parts += ["", "## Figures", ""]
  for figure in figures:
    parts += [f"![{figure.name}]({rel(figure)})", "", figure.caption, ""]

  base_plans = [(p, dict(run_kind="base", plan=p)) for p in _plans_of(results_lib.select(ppl, run_kind="base"))]
  parts += ["## Zero-shot perplexity (bits per byte) by window length", "", length_table(ppl, base_plans, lengths)]
  ft_labels = [(f"{m} fine-tuned at {cfg.finetune_scale}x", dict(run_kind="finetune", method=m, plan="trained",
                                                                 train_scale=cfg.finetune_scale))
               for m in cfg.finetune_methods]
  ft_labels += [(f"PI fine-tuned at {t}x, factor L/L0", dict(run_kind="finetune", method="pi", plan="PI s=L/L0",
                                                             train_scale=t)) for t in sorted(set(cfg.grid_train_scales))]
  parts += ["", "## Fine-tuned models", "", length_table(ppl, ft_labels, lengths)]
  ape = [(p, dict(run_kind="ape", plan=p)) for p in _plans_of(results_lib.select(ppl, run_kind="ape"))]
  if ape:
    parts += ["", "## Absolute positions (LongEmbed extensions of a learned-APE model)", "",
              length_table(ppl, ape, lengths)]
  xpos = results_lib.select(ppl, run_kind="xpos")
  if xpos:
    parts += ["", "## xPos (trained with it)", "", length_table(ppl, [("xPos", dict(run_kind="xpos"))], lengths)]
  parts += ["", "## Retrieval", "",
            "Exact greedy match of the answer (in brackets: fraction of answer tokens that are the argmax given "
            "the true prefix, and the number of examples), mean over key depths and seeds.", "",
            "Passkey:", "", retrieval_table(rows, "passkey"), "",
            f"Passkey by depth at {cfg.middle_length} tokens (lost in the middle), all depths pooled:", "",
            retrieval_table(rows, "middle"), "", "Key-value lines:", "", retrieval_table(rows, "lines")]
  attention = results_lib.select(rows, kind="attention")
  if attention:
    body = []
    for plan in _plans_of(attention):
      for scale in sorted({r["scale"] for r in attention}):
        cell = results_lib.select(attention, plan=plan, scale=scale)
        if cell:
          body.append([plan, f"{scale}x"] + [f"{r['metrics']['mass_beyond_train_length']:.3f}"
                                             for r in sorted(cell, key=lambda r: r["layer"])])
    layers = max(r["layer"] for r in attention) + 1
    parts += ["", "## Attention mass beyond the training length", "",
              "Fraction of attention at distances >= the training length (mean over queries, heads, documents):", "",
              markdown_table(["encoding", "window"] + [f"layer {i}" for i in range(layers)], body)]
  if train_rows:
    body = [[r["run"], f"{r['metrics']['steps']}", f"{r['metrics']['train_loss']:.3f}",
             "" if r["metrics"].get("eval_loss") is None else f"{r['metrics']['eval_loss']:.3f}",
             f"{r['metrics']['seconds']:.0f}"] for r in train_rows]
    parts += ["", "## Training runs", "", markdown_table(["run", "steps", "last train loss", "validation loss", "seconds"], body)]
  parts += ["", f"Raw rows: `results.jsonl` ({len(rows)} rows)."]
  with open(path, "w") as f:
    f.write("\n".join(parts) + "\n")
  return path
