"""Figures of a LongRoPE search: the factors found against PI / NTK / YaRN, and convergence.

Drawn with matplotlib's Agg canvas directly (no pyplot), so they work headless and do not
change the process-wide backend of a caller that uses pyplot itself.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rope_lab.search.config import SearchConfig
from rope_lab.search.seeds import ntk_factors, pi_factors, yarn_factors


def _figure(width: float = 6.4, height: float = 4.0):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height))
  FigureCanvasAgg(figure)
  return figure, figure.add_subplot()


def plot_factors(path: str, factors, cfg: SearchConfig, *, label: str = "LongRoPE (searched)",
                 short_factors=None) -> None:
  """lambda_i per rotary pair (log y): the searched set against PI, NTK-aware and YaRN at s."""
  figure, ax = _figure()
  pairs = np.arange(cfg.rotary_pairs)
  for name, values, style in (("PI", pi_factors(cfg), ":"), ("NTK-aware", ntk_factors(cfg), "--"),
                              ("YaRN", yarn_factors(cfg), "-.")):
    ax.plot(pairs, values, style, label=name)
  ax.plot(pairs, np.asarray(factors, np.float64), "o-", markersize=3, label=label)
  if short_factors is not None:
    ax.plot(pairs, np.asarray(short_factors, np.float64), "s-", markersize=3, label="short set")
  ax.set_yscale("log")
  ax.set_xlabel("rotary pair i (fast -> slow)")
  ax.set_ylabel("rescale factor lambda_i = theta_i / theta'_i")
  ax.set_title(f"rescale factors at s = {cfg.target_factor:g}")
  ax.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def plot_convergence(path: str, history: Sequence[dict]) -> None:
  """best / median / worst perplexity of the population per generation (log y)."""
  figure, ax = _figure()
  generations = [row["generation"] for row in history]
  for key, style in (("best", "o-"), ("median", "--"), ("worst", ":")):
    values = np.asarray([row[key] for row in history], np.float64)
    # A diverged candidate (inf) would hide the curve; leave its point out.
    ax.plot(generations, np.where(np.isfinite(values), values, np.nan), style, markersize=3, label=key)
  ax.set_yscale("log")
  ax.set_xlabel("generation")
  ax.set_ylabel("perplexity")
  ax.set_title("LongRoPE search convergence")
  ax.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
