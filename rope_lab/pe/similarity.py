"""Analytic query-key similarity of an encoding as a function of position.

For fixed vectors q and k, the score of q at position i against k at position j,
computed through the same hooks the model uses (rotation, xPos scales, ALiBi bias,
attention temperature, absolute tables). This is the Giraffe study's similarity
heatmap: it shows how each method stretches, truncates or damps the rotary basis.
"""

from __future__ import annotations

import numpy as np

from rope_lab.pe import Encoding
from rope_lab.pe import apply as pe_apply


def score_grid(
    encoding: Encoding,
    q_D: np.ndarray,
    k_D: np.ndarray,
    q_positions: np.ndarray,
    k_positions: np.ndarray,
    *,
    seq_len: int | None = None,
    head: int = 0,
    n_heads: int = 1,
) -> np.ndarray:
  """Scores [len(q_positions), len(k_positions)] = logit the model would compute (pre-softmax).

  ``seq_len`` is the current length for length-dependent methods (default: one past the
  largest position). Absolute encodings score (q + PE_i).(k + PE_j) with d_model = head dim.
  ``q_D`` and ``k_D`` may also be [P, D], P (q, k) pairs scored at once (each q against its
  own k, as a head meets only its own keys): the result is then [P, Lq, Lk], every pair
  through the same hooks and ``head``.
  """
  pairs = np.ndim(q_D) == 2
  q_PxD, k_PxD = np.atleast_2d(q_D), np.atleast_2d(k_D)
  n_pairs, head_dim = q_PxD.shape
  seq_len = seq_len or int(max(q_positions.max(), k_positions.max())) + 1
  hooks = encoding.hooks(head_dim=head_dim, n_heads=n_heads, d_model=head_dim, seq_len=seq_len)
  q_pos = np.asarray(q_positions, np.int32)[None]
  k_pos = np.asarray(k_positions, np.int32)[None]
  q_pos_i, q_pos_f, _ = pe_apply.map_positions(hooks.positions, q_pos)
  k_pos_i, k_pos_f, _ = pe_apply.map_positions(hooks.positions, k_pos)
  # The pairs ride on the head axis: rotations, scales and tables act alike on every head.
  q = np.broadcast_to(q_PxD, (1, q_pos.shape[1], n_pairs, head_dim)).astype(np.float32)
  k = np.broadcast_to(k_PxD, (1, k_pos.shape[1], n_pairs, head_dim)).astype(np.float32)
  if hooks.absolute == "sinusoidal":
    q = q + np.asarray(pe_apply.absolute_embedding(hooks, q_pos_f))[:, :, None]
    k = k + np.asarray(pe_apply.absolute_embedding(hooks, k_pos_f))[:, :, None]
  dot = lambda q, k: np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float64), np.asarray(k, np.float64))[0]
  if hooks.remap is not None:  # relative-position remapping: each pair scored with its rule's rotations
    qs, ks = pe_apply.rotate_remapped(hooks, q, k, q_pos_i, k_pos_i)
    rule_of_pair = np.asarray(pe_apply.remap_rule_index(hooks.remap, q_pos_i, k_pos_i))  # [1, Lq, Lk]
    scores = np.choose(rule_of_pair, [dot(q, k) for q, k in zip(qs, ks)])
  else:
    scores = dot(*pe_apply.rotate_qk(hooks, q, k, q_pos_i, k_pos_i))
  scores = scores / np.sqrt(head_dim) * float(hooks.logit_scale)  # [P, Lq, Lk]
  if hooks.alibi_slopes is not None:
    scores = scores + np.asarray(pe_apply.alibi_bias(hooks.alibi_slopes, q_pos_i, k_pos_i))[0, head]
  return scores if pairs else scores[0]


def score_by_distance(encoding: Encoding, q_D: np.ndarray, k_D: np.ndarray, max_distance: int,
                      *, seq_len: int | None = None) -> np.ndarray:
  """Score of q at position d against k at position 0, for d = 0 .. max_distance ([P, ...] for
  [P, D] pairs, as in ``score_grid``)."""
  distances = np.arange(max_distance + 1)
  return score_grid(encoding, q_D, k_D, distances, np.zeros(1, np.int64), seq_len=seq_len)[..., 0]


def wavelengths(encoding: Encoding, head_dim: int, seq_len: int) -> np.ndarray | None:
  """2 pi / theta_i per rotary pair (inf for a frozen pair), or None for non-rotary methods."""
  inv = encoding.inv_freq(head_dim, seq_len) if encoding.rotary_dim(head_dim) else None
  if inv is None:
    return None
  with np.errstate(divide="ignore"):
    return 2 * np.pi / inv
