"""Seed factors for the LongRoPE search: PI, NTK-aware and YaRN as per-pair rescale factors.

Every method that only changes frequencies is a factor vector lambda_i = theta_i / theta'_i,
with theta_i = base^(-2i/d) (d = 2P):

  PI        lambda_i = s
  NTK-aware lambda_i = theta_i / theta_i(base * s^(d/(d-2))) = s^(2i/(d-2)),
            so pair 0 keeps its frequency and the slowest pair scales by exactly s
  YaRN      lambda_i = 1 / ((1 - gamma_i) / s + gamma_i), gamma_i the NTK-by-parts ramp
            (1 for pairs turning more than beta_fast times over L_orig, 0 below beta_slow)
  ones      lambda_i = 1 (no interpolation; the start of a short search)

All are non-decreasing in i and lie in [1, s].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rope_lab.pe.frequency_scalings import ntk_base, yarn_inv_freq
from rope_lab.pe.rotary import default_inv_freq
from rope_lab.search.config import SearchConfig
from rope_lab.search.genome import Candidate, make_candidate


def pi_factors(cfg: SearchConfig) -> np.ndarray:
  return np.full(cfg.rotary_pairs, float(cfg.target_factor))


def ntk_factors(cfg: SearchConfig) -> np.ndarray:
  dim = 2 * cfg.rotary_pairs
  theta = default_inv_freq(dim, cfg.rope_base)
  return theta / default_inv_freq(dim, ntk_base(cfg.rope_base, cfg.target_factor, dim))


def yarn_factors(cfg: SearchConfig) -> np.ndarray:
  dim = 2 * cfg.rotary_pairs
  theta = default_inv_freq(dim, cfg.rope_base)
  scaled = yarn_inv_freq(dim, cfg.rope_base, cfg.target_factor, cfg.original_length,
                         cfg.yarn_beta_fast, cfg.yarn_beta_slow, truncate=True)
  return theta / scaled


def ones_factors(cfg: SearchConfig) -> np.ndarray:
  return np.ones(cfg.rotary_pairs)


NAMED_SEEDS = {"pi": pi_factors, "ntk": ntk_factors, "yarn": yarn_factors, "ones": ones_factors}


def rescale_factors(factors, to_factor: float, from_factor: float | None = None,
                    mode: str = "log") -> np.ndarray:
  """Maps factors found for extension s1 = from_factor into [1, s2 = to_factor] (progressive).

  "log":   lambda' = lambda^(ln s2 / ln s1)  keeps 1 at 1 and s1 at s2
  "ratio": lambda' = lambda * s2 / s1        PI stays PI, extrapolated pairs become s2 / s1
  "clip":  lambda' = lambda                  only clipped (from_factor unused)
  The result is clipped to [1, s2] and made non-decreasing by a running maximum (factor
  files saved with require_monotone=False may dip).
  """
  values = np.asarray(factors, np.float64)
  if values.ndim != 1 or not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise ValueError(f"factors must be a 1-d vector of finite positive numbers, got {factors!r}")
  if mode not in ("log", "ratio", "clip"):
    raise ValueError(f"mode must be 'log', 'ratio' or 'clip', got {mode!r}")
  if mode != "clip":
    if from_factor is None or not from_factor > 1:
      raise ValueError(f"mode {mode!r} needs from_factor > 1 (the s the factors were found at), "
                       f"got {from_factor!r}")
    if mode == "log":
      values = np.maximum(values, 1.0) ** (np.log(to_factor) / np.log(from_factor))
    else:
      values = values * (to_factor / from_factor)
  return np.maximum.accumulate(np.clip(values, 1.0, float(to_factor)))


def piece_bounds(steps: np.ndarray, top: int) -> tuple[int, int]:
  """alpha, beta that leave a factor vector unchanged: its run of 1s and its run of s.

  alpha = leading steps at 0 (at most P - 1), beta = P - trailing steps at K (at least
  alpha + 1), so alpha < beta always holds.
  """
  pairs = steps.size
  leading = int(np.argmax(steps != 0)) if np.any(steps != 0) else pairs
  trailing = int(np.argmax(steps[::-1] != top)) if np.any(steps != top) else pairs
  alpha = min(leading, pairs - 1)
  return alpha, max(pairs - trailing, alpha + 1)


def check_seed_factors(factors, cfg: SearchConfig, tolerance: float = 1e-6) -> np.ndarray:
  """A caller's seed as a float vector; an error unless it has P entries in [1, s], non-decreasing."""
  values = np.asarray(factors, np.float64)
  s = cfg.target_factor
  if values.shape != (cfg.rotary_pairs,):
    raise ValueError(f"seed factors must have {cfg.rotary_pairs} entries (one per rotary pair), "
                     f"got shape {values.shape}")
  if not np.all(np.isfinite(values)) or values.min() < 1 - tolerance or values.max() > s + tolerance:
    raise ValueError(f"seed factors must lie in [1, {s}]; map factors found at another extension "
                     f"with rescale_factors, got range [{values.min()}, {values.max()}]")
  if np.any(np.diff(values) < -tolerance):
    raise ValueError("seed factors must be non-decreasing from the fastest to the slowest pair")
  return values


def seed_candidates(cfg: SearchConfig, extra_factors: Sequence = ()) -> list[Candidate]:
  """The seeds on the grid: the caller's factor vectors first, then cfg.seeds; duplicates dropped."""
  vectors = [check_seed_factors(f, cfg) for f in extra_factors]
  vectors += [NAMED_SEEDS[name](cfg) for name in cfg.seeds]
  seeds, keys = [], set()
  for vector in vectors:
    # Nearest grid point is monotone, and the running max removes float noise of 1 step.
    steps = np.maximum.accumulate(cfg.steps_of(vector))
    alpha, beta = piece_bounds(steps, cfg.grid_top) if cfg.piecewise else (0, cfg.rotary_pairs)
    candidate = make_candidate(steps, cfg.n_hat, alpha, beta)
    if candidate.key not in keys:
      keys.add(candidate.key)
      seeds.append(candidate)
  return seeds
