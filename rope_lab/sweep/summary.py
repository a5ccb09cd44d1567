"""A finished sweep at a glance: a table of its rows and a figure of its loss curves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rope_lab import results as results_lib

METRICS = ("steps", "train_loss", "eval_loss", "seconds")


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value)


def table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A Markdown table: one line per run, its swept values then its final metrics."""
  if not rows:
    return "(no finished runs)"
  keys = list(dict.fromkeys(k for row in rows for k in row.get("point", {})))
  metrics = [m for m in METRICS if any(m in row["metrics"] for row in rows)]
  header = ["run", *keys, *metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in sorted(rows, key=lambda r: r["key"]):
    cells = [row["key"], *(row.get("point", {}).get(k) for k in keys),
             *(row["metrics"].get(m) for m in metrics)]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  return "\n".join(lines)


def figure(rows: Sequence[Mapping[str, Any]], path: str) -> str | None:
  """Training (solid) and validation (dashed) loss against step, one colour per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  curves = []
  for row in sorted(rows, key=lambda r: r["key"]):
    metrics = results_lib.read_rows(os.path.join(row["workdir"], "metrics.jsonl"))
    train = [(m["step"], m["loss"]) for m in metrics if m.get("split") == "train" and "loss" in m]
    held = [(m["step"], m["loss"]) for m in metrics if m.get("split") != "train" and "loss" in m]
    if train or held:
      curves.append((row["key"], train, held))
  if not curves:
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for index, (name, train, held) in enumerate(curves):
    color = f"C{index % 10}"
    if train:
      ax.plot(*zip(*train), color=color, label=name, linewidth=1)
    if held:
      ax.plot(*zip(*held), color=color, linestyle="--", marker="o", markersize=3,
              label=None if train else name)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token); dashed: validation")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
