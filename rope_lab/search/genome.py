"""Candidates of the LongRoPE search and the two operators that make new ones.

A candidate is P grid steps k_0 <= k_1 <= ... <= k_{P-1} in [0, K] (factor
lambda_i = min(1 + k_i * step, s), non-decreasing from the fastest pair 0 to the slowest),
an n_hat gene and, for the piecewise variant, two genes 0 <= alpha < beta <= P with
k_i = 0 (lambda = 1) for i < alpha and k_i = K (lambda = s) for i >= beta. Without the
piecewise variant alpha = 0 and beta = P, so nothing is forced.

Mutation resamples one gene at a time inside the interval its neighbours allow, so it can
never break monotonicity. Crossover mixes two parents gene by gene and may: its
non-monotone children are rejected and the draw repeated, a bounded number of times.
"""

from __future__ import annotations

import dataclasses
from typing import Collection

import numpy as np

from rope_lab.search.config import SearchConfig


@dataclasses.dataclass(frozen=True)
class Candidate:
  steps: tuple  # grid step per rotary pair, fastest pair first
  n_hat: int
  alpha: int  # pairs < alpha are forced to factor 1 (piecewise variant; else 0)
  beta: int  # pairs >= beta are forced to factor s (piecewise variant; else P)

  @property
  def key(self) -> tuple:
    """What the scorer sees: two candidates with equal keys have the same perplexity."""
    return (self.steps, self.n_hat)


def make_candidate(steps, n_hat: int, alpha: int, beta: int) -> Candidate:
  return Candidate(tuple(int(k) for k in steps), int(n_hat), int(alpha), int(beta))


def violations(candidate: Candidate, cfg: SearchConfig) -> list[str]:
  """Every constraint the candidate breaks, in words; empty when it is valid."""
  steps = np.asarray(candidate.steps, np.int64)
  top, pairs = cfg.grid_top, cfg.rotary_pairs
  problems = []
  if steps.shape != (pairs,):
    return [f"{steps.size} steps for {pairs} rotary pairs"]
  if steps.min() < 0 or steps.max() > top:
    problems.append(f"steps outside [0, {top}]")
  if np.any(np.diff(steps) < 0):
    problems.append("factors decrease from a faster to a slower pair")
  if not 0 <= candidate.alpha < candidate.beta <= pairs:
    problems.append(f"alpha ({candidate.alpha}) < beta ({candidate.beta}) in [0, {pairs}] does not hold")
  elif not cfg.piecewise and (candidate.alpha, candidate.beta) != (0, pairs):
    problems.append("alpha/beta set without the piecewise variant")
  else:
    if np.any(steps[:candidate.alpha] != 0):
      problems.append("a pair below alpha has a factor other than 1")
    if np.any(steps[candidate.beta:] != top):
      problems.append("a pair at or above beta has a factor other than s")
  allowed_n_hat = cfg.n_hat_choices if cfg.search_n_hat else (cfg.n_hat,)
  if candidate.n_hat not in allowed_n_hat:
    problems.append(f"n_hat {candidate.n_hat} not in {allowed_n_hat}")
  return problems


def is_valid(candidate: Candidate, cfg: SearchConfig) -> bool:
  return not violations(candidate, cfg)


def force_pieces(steps: np.ndarray, alpha: int, beta: int, top: int) -> np.ndarray:
  """k_i = 0 for i < alpha and K for i >= beta. Never breaks monotonicity: 0 <= k <= K."""
  steps = steps.copy()
  steps[:alpha] = 0
  steps[beta:] = top
  return steps


def mutate_once(parent: Candidate, cfg: SearchConfig, rng: np.random.Generator) -> Candidate:
  """One mutation draw; each gene is resampled with probability cfg.mutation_prob.

  Piecewise genes first (alpha ~ U{0..beta-1}, then beta ~ U{alpha+1..P}), then pairs in
  [alpha, beta), one at a time, each k_i ~ U{k_{i-1} .. k_{i+1}} with k_{-1} = 0 and
  k_P = K. Pairs are visited in a random order so no direction is favoured.
  """
  p, pairs, top = cfg.mutation_prob, cfg.rotary_pairs, cfg.grid_top
  steps = np.asarray(parent.steps, np.int64)
  alpha, beta = parent.alpha, parent.beta
  if cfg.piecewise:
    if rng.random() < p:
      alpha = int(rng.integers(0, beta))
    if rng.random() < p:
      beta = int(rng.integers(alpha + 1, pairs + 1))
    steps = force_pieces(steps, alpha, beta, top)
  resample = rng.random(pairs) < p
  for i in rng.permutation(pairs):
    if resample[i] and alpha <= i < beta:
      low = steps[i - 1] if i > 0 else 0
      high = steps[i + 1] if i < pairs - 1 else top
      steps[i] = rng.integers(low, high + 1)
  n_hat = parent.n_hat
  if cfg.search_n_hat and rng.random() < p:
    n_hat = cfg.n_hat_choices[int(rng.integers(len(cfg.n_hat_choices)))]
  return make_candidate(steps, n_hat, alpha, beta)


def crossover_once(first: Candidate, second: Candidate, cfg: SearchConfig,
                   rng: np.random.Generator) -> Candidate:
  """One crossover draw: each gene is mixed with probability cfg.crossover_prob, and a mixed
  gene comes from either parent with probability 1/2 (so crossover_prob = 1 is uniform
  crossover). The result may be invalid; the caller rejects it.
  """
  pairs = cfg.rotary_pairs

  def from_second(n: int) -> np.ndarray:
    return (rng.random(n) < cfg.crossover_prob) & (rng.random(n) < 0.5)

  steps = np.where(from_second(pairs), np.asarray(second.steps), np.asarray(first.steps))
  alpha, beta = first.alpha, first.beta
  if cfg.piecewise:
    take_alpha, take_beta = from_second(2)
    alpha = second.alpha if take_alpha else first.alpha
    beta = second.beta if take_beta else first.beta
    if alpha < beta:  # otherwise the child is invalid anyway; keep the genes for the report
      steps = force_pieces(steps, alpha, beta, cfg.grid_top)
  n_hat = first.n_hat
  if cfg.search_n_hat and from_second(1)[0]:
    n_hat = second.n_hat
  return make_candidate(steps, n_hat, alpha, beta)


def mutate(parent: Candidate, cfg: SearchConfig, rng: np.random.Generator,
           taken: Collection[tuple]) -> Candidate | None:
  """A valid child whose key is not in ``taken``, or None after cfg.max_tries draws."""
  for _ in range(cfg.max_tries):
    child = mutate_once(parent, cfg, rng)
    if child.key not in taken and is_valid(child, cfg):
      return child
  return None


def crossover(first: Candidate, second: Candidate, cfg: SearchConfig, rng: np.random.Generator,
              taken: Collection[tuple]) -> Candidate | None:
  """A valid new child of two parents, or None after cfg.max_tries rejected draws.

  Rejection rather than repair: sorting or clipping a non-monotone mix would bias
  children towards the parents' envelope instead of their genes.
  """
  if first.key == second.key:
    return None  # every mix would be the parent itself
  for _ in range(cfg.max_tries):
    child = crossover_once(first, second, cfg, rng)
    if child.key not in taken and is_valid(child, cfg):
      return child
  return None
