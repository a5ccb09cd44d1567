"""Analytic query-key similarity maps for the study (Giraffe's heatmaps).

For probe vectors q, k, the pre-softmax score of q at position i against k at position j
is computed by ``rope_lab.pe.similarity`` through the same hooks the model uses. Three
probes: all-ones, one Gaussian draw (q = k), and a trained model's mean q and k of every
layer and head (the score averaged over them, each head with its own q and k, since a
head's query only ever meets its own key space).
"""

from __future__ import annotations

import numpy as np

from rope_lab import pe

from rope_lab.pe import similarity
from rope_lab.errors import ConfigError

PROBES = ("ones", "gaussian", "trained")


def probe_pairs(kind: str, head_dim: int, *, seed: int = 0, q_mean: np.ndarray | None = None,
                k_mean: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
  """(q, k) pairs of one probe kind; 'trained' needs ``mean_qk``'s [n_layers, H|K, Dh] arrays."""
  if kind == "ones":
    ones = np.ones(head_dim, np.float32)
    return [(ones, ones)]
  if kind == "gaussian":
    v = np.random.default_rng(seed).normal(size=head_dim).astype(np.float32)
    return [(v, v)]
  if kind == "trained":
    if q_mean is None or k_mean is None:
      raise ConfigError("probe 'trained' needs q_mean and k_mean (from evaluate.mean_qk)")
    n_heads, n_kv = q_mean.shape[1], k_mean.shape[1]
    return [(q_mean[layer, h], k_mean[layer, h // (n_heads // n_kv)])
            for layer in range(q_mean.shape[0]) for h in range(n_heads)]
  raise ConfigError(f"unknown probe {kind!r}; valid: {PROBES}")


def probe_score_grid(encoding: pe.Encoding, pairs, positions: np.ndarray, *, seq_len: int) -> np.ndarray:
  """[len(positions), len(positions)] score of query i against key j, averaged over the pairs.

  Scores of j > i (the future, which causal attention never uses) are set to NaN.
  """
  q_PxD, k_PxD = (np.stack(side) for side in zip(*pairs))
  grid = similarity.score_grid(encoding, q_PxD, k_PxD, positions, positions, seq_len=seq_len).mean(axis=0)
  grid[positions[:, None] < positions[None, :]] = np.nan
  return grid


def probe_score_by_distance(encoding: pe.Encoding, pairs, max_distance: int, *, seq_len: int) -> np.ndarray:
  """[max_distance + 1] score at relative distance d (query at d, key at 0), averaged over pairs."""
  q_PxD, k_PxD = (np.stack(side) for side in zip(*pairs))
  return similarity.score_by_distance(encoding, q_PxD, k_PxD, max_distance, seq_len=seq_len).mean(axis=0)
