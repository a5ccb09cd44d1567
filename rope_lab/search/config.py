"""SearchConfig: the space and hyperparameters of the LongRoPE evolution search.

The search space is a grid: pair i carries an integer step k_i in [0, K] and its rescale
factor is lambda_i = min(1 + k_i * grid_step, s), with K = ceil((s - 1) / grid_step) so
that the top of the grid is exactly s even when s - 1 is not a multiple of the step.
Candidates are compared, de-duplicated and stored as these integers, so two candidates
are the same exactly when the scorer would see the same factors.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from rope_lab.errors import ConfigError, check

# Reference candidate list for n_hat, the leading positions left un-interpolated.
DEFAULT_N_HAT_CHOICES = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
# "ones" (no interpolation) is the natural seed of a short search at the original length.
SEED_NAMES = ("pi", "ntk", "yarn", "ones")


class SearchConfigError(ConfigError):
  """A SearchConfig field is invalid; the message names it."""


class SearchSetupError(ConfigError):
  """A search on a trained model cannot start with these settings or inputs; the message names the field."""


def _require(condition: bool, field: str, valid: str, value) -> None:
  check(condition, f"SearchConfig.{field}", valid, value, SearchConfigError)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Everything that defines one search; two runs with equal configs make equal choices.

  Reference hyperparameters (Ding et al. 2024): population 64, 40 generations, 16
  mutations and 16 crossovers per generation, top 32 kept, probabilities 0.3.
  """

  target_factor: float  # s = L_target / L_orig; every factor lies in [1, s]
  rotary_pairs: int  # P = rotary_dim / 2, one factor per pair
  original_length: int  # L_orig, used by the YaRN seed
  rope_base: float = 10000.0
  grid_step: float = 0.01  # spacing of the factor grid
  population: int = 64  # size of the initial population
  generations: int = 40  # generations after the initial one
  mutations: int = 16  # children made by mutation per generation
  crossovers: int = 16  # children made by crossover per generation
  top_k: int = 32  # parents kept per generation (the rest is discarded)
  mutation_prob: float = 0.3  # per-gene probability of a resample
  crossover_prob: float = 0.3  # per-gene probability of a mix; a mixed gene comes from either parent
  max_tries: int = 100  # attempts to make one new valid child before giving up
  piecewise: bool = False  # search alpha < beta: 1 for pairs < alpha, s for pairs >= beta
  search_n_hat: bool = False  # search n_hat among n_hat_choices
  n_hat: int = 0  # n_hat of the seeds (and of every candidate when not searched)
  n_hat_choices: tuple = DEFAULT_N_HAT_CHOICES
  seeds: tuple = ("pi", "ntk", "yarn")  # named seeds, from SEED_NAMES
  yarn_beta_fast: float = 32.0
  yarn_beta_slow: float = 1.0
  score_batch_size: int | None = None  # None: one scorer call per generation
  seed: int = 0

  def __post_init__(self):
    # JSON round trips give lists; tuples keep the config hashable and comparable.
    object.__setattr__(self, "n_hat_choices", tuple(self.n_hat_choices))
    object.__setattr__(self, "seeds", tuple(self.seeds))
    self._validate()

  def _validate(self) -> None:
    s = self.target_factor
    _require(_is_number(s) and math.isfinite(s) and s >= 1, "target_factor",
             "a finite number >= 1 (s = L_target / L_orig)", s)
    _require(_is_int(self.rotary_pairs) and self.rotary_pairs >= 2, "rotary_pairs",
             "an integer >= 2 (rotary_dim / 2)", self.rotary_pairs)
    _require(_is_int(self.original_length) and self.original_length >= 2, "original_length",
             "an integer >= 2", self.original_length)
    _require(_is_number(self.rope_base) and self.rope_base > 1, "rope_base", "> 1", self.rope_base)
    _require(_is_number(self.grid_step) and math.isfinite(self.grid_step) and self.grid_step > 0, "grid_step",
             "a finite number > 0", self.grid_step)
    for name in ("population", "top_k", "max_tries"):
      value = getattr(self, name)
      _require(_is_int(value) and value >= 1, name, "an integer >= 1", value)
    for name in ("generations", "mutations", "crossovers", "seed"):
      value = getattr(self, name)
      _require(_is_int(value) and value >= 0, name, "an integer >= 0", value)
    _require(self.population >= self.top_k, f"population ({self.population})", f">= top_k ({self.top_k})",
             self.population)
    _require(self.crossovers == 0 or self.top_k >= 2, f"top_k ({self.top_k})",
             f">= 2 when crossovers ({self.crossovers}) > 0: a crossover needs two parents", self.top_k)
    for name in ("mutation_prob", "crossover_prob"):
      value = getattr(self, name)
      _require(_is_number(value) and 0 <= value <= 1, name, "in [0, 1]", value)
    choices = self.n_hat_choices
    _require(len(choices) > 0 and all(_is_int(n) and n >= 0 for n in choices)
             and len(set(choices)) == len(choices), "n_hat_choices", "distinct integers >= 0", choices)
    _require(_is_int(self.n_hat) and self.n_hat >= 0, "n_hat", "an integer >= 0", self.n_hat)
    _require(not self.search_n_hat or self.n_hat in choices, f"n_hat ({self.n_hat})",
             f"one of n_hat_choices {choices} when search_n_hat is set", self.n_hat)
    unknown = [name for name in self.seeds if name not in SEED_NAMES]
    _require(not unknown, "seeds", f"names from {SEED_NAMES} (these are unknown {unknown})", self.seeds)
    _require(_is_number(self.yarn_beta_fast) and _is_number(self.yarn_beta_slow)
             and self.yarn_beta_fast > self.yarn_beta_slow > 0, "yarn_beta_fast/yarn_beta_slow",
             "such that yarn_beta_fast > yarn_beta_slow > 0", (self.yarn_beta_fast, self.yarn_beta_slow))
    _require(self.score_batch_size is None or (_is_int(self.score_batch_size) and self.score_batch_size >= 1),
             "score_batch_size", "None or an integer >= 1", self.score_batch_size)

  # --------------------------------------------------------------------------- grid

  @property
  def grid_top(self) -> int:
    """K = ceil((s - 1) / step): the grid index of s (the small slack absorbs float error)."""
    return int(math.ceil((self.target_factor - 1.0) / self.grid_step - 1e-9))

  def factors_of(self, steps) -> np.ndarray:
    """lambda = min(1 + k * step, s), rounded to 12 decimals so files show 1.07, not 1.0700000000000001."""
    steps = np.asarray(steps, np.int64)
    return np.minimum(np.round(1.0 + steps * self.grid_step, 12), float(self.target_factor))

  def steps_of(self, factors) -> np.ndarray:
    """Nearest grid index of each factor (clipped to [1, s]); monotone, so it keeps order."""
    factors = np.clip(np.asarray(factors, np.float64), 1.0, float(self.target_factor))
    low = np.clip(np.floor((factors - 1.0) / self.grid_step), 0, self.grid_top).astype(np.int64)
    high = np.minimum(low + 1, self.grid_top)
    closer_high = np.abs(self.factors_of(high) - factors) < np.abs(self.factors_of(low) - factors)
    return np.where(closer_high, high, low)

  def to_json(self) -> dict:
    return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


# Fields that may change between a run and its resumption: they do not change any choice.
RESUMABLE_FIELDS = ("generations", "score_batch_size")


def config_changes(saved: dict, cfg: SearchConfig) -> list[str]:
  """Names of the fields (other than RESUMABLE_FIELDS) where a saved config differs from cfg."""
  current = json.loads(json.dumps(cfg.to_json()))  # tuples -> lists, as in the saved file
  names = set(current) | set(saved)
  return sorted(name for name in names
                if name not in RESUMABLE_FIELDS and saved.get(name) != current.get(name))
