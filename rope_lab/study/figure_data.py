"""The numbers the study's figures show, computed from rows and arrays (figures.py draws them).

Curves over seeds are the mean with the lowest and highest seed; grids are means per
cell. Rows are grouped by plan id (and run_key for (run, encoding) pairs); labels are only
carried along for the legends.
"""

from __future__ import annotations

import numpy as np

from rope_lab import results as results_lib
from rope_lab.evaluate import analytic, attention_maps
from rope_lab.evaluate.plans import PI_MATCHED
from rope_lab.study.runs import run_key


def curve(rows, metric: str = "bits_per_byte", x: str = "length"):
  """(xs, mean, low, high, n seeds) of ``metric`` grouped by ``x`` (rows of one method)."""
  xs = sorted({r[x] for r in rows})
  stats = [results_lib.summarize([r for r in rows if r[x] == v], metric) for v in xs]
  return (np.asarray(xs), np.asarray([s.mean for s in stats]), np.asarray([s.low for s in stats]),
          np.asarray([s.high for s in stats]), max(s.n for s in stats))


def value_range(groups, metric) -> tuple[float, float] | None:
  """Every curve's values in view, with a small margin."""
  values = [r["metrics"][metric] for _, rows in groups for r in rows]
  if not values:
    return None
  low, high = min(values), max(values)
  margin = 0.04 * (high - low or 1.0)
  return low - margin, high + margin


def by_plan(rows) -> list[tuple[str, list]]:
  """(label, rows) per plan id, in order of first appearance."""
  groups: dict[str, list] = {}
  for r in rows:
    groups.setdefault(r["plan_id"], []).append(r)
  return [(group[0]["plan"], group) for group in groups.values()]


def plan_label(rows, plan_id: str) -> str:
  """The label rows give a plan id (the id itself when no row has it)."""
  return next((r["plan"] for r in rows if r.get("plan_id") == plan_id), plan_id)


def by_run(rows) -> dict[tuple, list]:
  """Rows grouped by (run, encoding) pair: run_key -> rows, in order of first appearance."""
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault(run_key(r), []).append(r)
  return groups


def grid_values(rows, cfg) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
  """Giraffe grid: rows = fine-tuning scale a (1: base), columns = evaluation scale b."""
  cells = results_lib.select(rows, kind="perplexity", plan_id=PI_MATCHED, split=cfg.eval_split)
  cells = [r for r in cells if r["run_kind"] == "base" or (r["run_kind"] == "finetune" and r["method"] == cfg.grid_finetune)]
  train_scales = sorted({r["train_scale"] for r in cells})
  eval_scales = sorted({int(round(r["scale"])) for r in cells})
  mean = np.full((len(train_scales), len(eval_scales)), np.nan)
  spread = np.full_like(mean, np.nan)
  for i, a in enumerate(train_scales):
    for j, b in enumerate(eval_scales):
      summary = results_lib.summarize([r for r in cells if r["train_scale"] == a
                                       and int(round(r["scale"])) == b], "bits_per_byte")
      if summary:
        mean[i, j], spread[i, j] = summary.mean, summary.std
  return train_scales, eval_scales, mean, spread


def similarity_panel(plan, reference_plan, pairs, n_tokens: int, length: int, train_length: int) -> np.ndarray:
  """[n_tokens, n_tokens] analytic q.k score of query i against key j for the first ``n_tokens``
  positions of a ``length``-token window, one cell per token pair (no pooling: the fastest rotary
  pairs turn by about a radian per token, so averaging neighbours would cancel them), divided by
  the reference plan's score at distance 0. NaN above the diagonal (the causal future)."""
  reference = analytic.probe_score_by_distance(reference_plan.encoding(length, train_length), pairs, 0,
                                               seq_len=int(length))[0]
  positions = np.arange(min(int(n_tokens), int(length)))
  return analytic.probe_score_grid(plan.encoding(length, train_length), pairs, positions,
                                   seq_len=int(length)) / abs(reference)


def same_numbers(a, b) -> bool:
  """Whether two panels (arrays, or tuples of arrays) hold the same numbers, NaN matching NaN."""
  a, b = (x if isinstance(x, tuple) else (x,) for x in (a, b))
  return len(a) == len(b) and all(np.shape(x) == np.shape(y) and np.allclose(x, y, rtol=1e-6, atol=1e-9,
                                                                             equal_nan=True)
                                  for x, y in zip(a, b))


def distinct_panels(panels: list[tuple[str, object]]) -> tuple[list[int], list[tuple[str, list[str]]]]:
  """Indices of the panels to draw (the first of each set with the same numbers) and, for each kept
  panel that others equal, (its label, the labels of the dropped copies)."""
  kept: list[int] = []
  copies: dict[int, list[str]] = {}
  for i, (label, values) in enumerate(panels):
    same = next((k for k in kept if same_numbers(panels[k][1], values)), None)
    if same is None:
      kept.append(i)
    else:
      copies.setdefault(same, []).append(label)
  return kept, [(panels[k][0], copies[k]) for k in kept if k in copies]


def coincidence_note(copies: list[tuple[str, list[str]]], where: str) -> str:
  """Caption text naming the methods whose panels were dropped as copies of another's ("" if none)."""
  if not copies:
    return ""
  pairs = "; ".join(f"{', '.join(dropped)} = {label}" for label, dropped in copies)
  return f" Not drawn because their numbers equal another column's: {pairs} ({where})."


def similarity_by_distance(plan, pairs, max_distance: int, train_length: int) -> np.ndarray:
  """Analytic score at distances 1..max_distance / the score at distance 0, at the longest window."""
  scores = analytic.probe_score_by_distance(plan.encoding(max_distance + 1, train_length), pairs, max_distance,
                                            seq_len=max_distance + 1)
  return scores[1:] / abs(scores[0])


def attention_density(data) -> tuple[np.ndarray, np.ndarray]:
  """(bin centres, attention mass per token of distance [layer, bin]) from a saved attention file."""
  length = int(data["length"])
  edges = attention_maps.distance_bins(length)
  widths = np.diff(np.minimum(edges, length))
  return np.maximum(edges[:-1], 0.5), attention_maps.binned_mass(data["mass"], edges) / widths


def retrieval_grid(rows, metric: str, lengths, depths) -> np.ndarray:
  """Mean ``metric`` per [depth, length] over seeds and samples (NaN where not measured)."""
  grid = np.full((len(depths), len(lengths)), np.nan)
  for i, depth in enumerate(depths):
    for j, length in enumerate(lengths):
      summary = results_lib.summarize(results_lib.select(rows, depth=depth, length=length), metric)
      if summary:
        grid[i, j] = summary.mean
  return grid


def baseline_lines(rows, cfg) -> list[tuple[str, float]]:
  """(label, bits per byte) of the horizontal reference lines of the perplexity figures: the base
  model with its window cut to a fraction of the training length (same tokens, plain RoPE), the
  byte n-gram fitted on the training split, and the training split's unigram entropy."""
  lines = []
  short = int(round(cfg.train_length * cfg.truncation_scale))
  cut = results_lib.select(rows, kind="perplexity", run_kind="base", plan_id="rope", split=cfg.eval_split,
                           length=short)
  if cut:
    summary = results_lib.summarize(cut, "bits_per_byte")
    lines.append((f"base model, window cut to {short} tokens (n={summary.n})", summary.mean))
  for row in results_lib.select(rows, kind="baseline", split=cfg.eval_split)[-1:]:
    lines.append((f"order-{row['order']} byte n-gram (Kneser-Ney, training split)", row["metrics"]["bits_per_byte"]))
    lines.append(("unigram entropy (training split)", row["metrics"]["unigram_entropy"]))
  return lines
