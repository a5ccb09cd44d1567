"""LongRoPE (Ding et al. 2024): searched per-pair rescale factors, short and long sets.

theta'_i = theta_i / lambda_i with one factor lambda_i per rotary pair, non-decreasing
from fast to slow pairs. The short set applies up to the original length, the long set
beyond it; the first n_hat positions keep the unscaled frequencies, and q/k are scaled
by sqrt(1 + ln(s) / ln(L_orig)). Factors travel as a small JSON file so a search can hand
its result to any run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from rope_lab.pe.base import ConfigError, check, register, required
from rope_lab.pe.frequency_scalings import RoPE, _check_original
from rope_lab.pe.rotary import default_inv_freq

FACTOR_FILE_FORMAT = "rope_lab.longrope/1"


def longrope_attention_factor(factor: float, original: int) -> float:
  """sqrt(1 + ln(s) / ln(L_orig)) for s > 1, else 1."""
  return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))


def check_factor_list(method: str, field: str, factors, monotone: bool) -> None:
  check(factors is not None and len(factors) > 0, method, field, "a non-empty list of factors", factors)
  values = np.asarray(factors, np.float64)
  check(bool(np.all(np.isfinite(values)) and np.all(values > 0)), method, field,
        "finite and > 0", factors)
  if monotone:
    bad = np.nonzero(np.diff(values) < 0)[0]
    check(bad.size == 0, method, field,
          "non-decreasing from the fastest to the slowest pair "
          f"(first decrease at pair {int(bad[0]) + 1 if bad.size else -1})", factors)


@register
@dataclasses.dataclass(frozen=True)
class LongRoPE(RoPE):
  """LongRoPE (Ding et al. 2024): theta_i / lambda_i, short set for L <= L_orig, long set beyond."""

  name = "longrope"
  paper = "Ding et al. 2024, LongRoPE"
  changes = "rotary frequencies (short/long switch), attention temperature"

  short_factor: tuple | None = required()
  long_factor: tuple | None = required()
  original_max_position_embeddings: int | None = required()
  factor: float | None = None  # extension ratio s for the attention factor; None: max / original
  max_position_embeddings: int | None = None  # the extended length; s = it / L_orig when factor is None
  attention_factor: float | None = None  # overrides sqrt(1 + ln s / ln L_orig)
  n_hat: int = 0  # leading positions kept un-interpolated (long regime only, as the reference)
  head_dim: int | None = None  # when set, factor lists are checked against it at once
  require_monotone: bool = True  # False only to load factors found without the constraint

  def validate(self):
    super().validate()
    _check_original(self.name, self.original_max_position_embeddings)
    check_factor_list(self.name, "short_factor", self.short_factor, self.require_monotone)
    check_factor_list(self.name, "long_factor", self.long_factor, self.require_monotone)
    check(len(self.short_factor) == len(self.long_factor), self.name, "long_factor",
          f"as long as short_factor ({len(self.short_factor)})", len(self.long_factor))
    if self.factor is not None:
      check(self.factor >= 1, self.name, "factor", ">= 1", self.factor)
    if self.max_position_embeddings is not None:
      check(self.max_position_embeddings >= 1, self.name, "max_position_embeddings", ">= 1",
            self.max_position_embeddings)
    if self.attention_factor is not None:
      check(self.attention_factor > 0, self.name, "attention_factor", "> 0", self.attention_factor)
    check(self.n_hat >= 0, self.name, "n_hat", ">= 0", self.n_hat)
    if self.head_dim is not None:
      self.check_pairs(self.head_dim)
    check(self.factor is not None or self.max_position_embeddings is not None
          or self.attention_factor is not None, self.name, "factor",
          "set (or max_position_embeddings, or attention_factor): the attention factor "
          "sqrt(1 + ln s / ln L_orig) needs the extension ratio s", self.factor)

  def check_pairs(self, head_dim: int) -> None:
    pairs = self.rotary_dim(head_dim) // 2
    if len(self.long_factor) != pairs:
      raise ConfigError(
          f"{self.name}: short_factor/long_factor have {len(self.long_factor)} entries but head_dim "
          f"{head_dim} x rotary_fraction {self.rotary_fraction} has {pairs} rotary pairs"
      )
    if self.head_dim is not None and head_dim != self.head_dim:
      raise ConfigError(f"{self.name}: factors were made for head_dim {self.head_dim}, model has {head_dim}")

  def factors_at(self, seq_len: int) -> np.ndarray:
    long = seq_len > self.original_max_position_embeddings
    return np.asarray(self.long_factor if long else self.short_factor, np.float64)

  def inv_freq(self, head_dim, seq_len):
    self.check_pairs(head_dim)
    return default_inv_freq(self.rotary_dim(head_dim), self.base) / self.factors_at(seq_len)

  def extension_ratio(self) -> float | None:
    """s: ``factor``, else max_position_embeddings / L_orig (transformers' and the reference's default)."""
    if self.factor is not None:
      return self.factor
    if self.max_position_embeddings is not None:
      return self.max_position_embeddings / self.original_max_position_embeddings
    return None

  def near_positions(self, seq_len: int) -> int:
    # The reference keeps the first n_hat positions unscaled only where the long factors
    # apply; in the short regime every position uses the short set.
    return self.n_hat if seq_len > self.original_max_position_embeddings else 0

  def attention_scaling(self, seq_len):
    if self.attention_factor is not None:
      return self.attention_factor
    return longrope_attention_factor(self.extension_ratio(), self.original_max_position_embeddings)


def save_factors(path: str, encoding: LongRoPE, *, head_dim: int, extra: dict | None = None) -> None:
  """Writes the factors (and what they were searched for) as JSON, atomically."""
  encoding.check_pairs(head_dim)
  record = {
      "format": FACTOR_FILE_FORMAT,
      "head_dim": head_dim,
      "rotary_fraction": encoding.rotary_fraction,
      "layout": encoding.layout,
      "base": encoding.base,
      "short_factor": list(encoding.short_factor),
      "long_factor": list(encoding.long_factor),
      "original_max_position_embeddings": encoding.original_max_position_embeddings,
      "factor": encoding.factor,
      "max_position_embeddings": encoding.max_position_embeddings,
      "attention_factor": encoding.attention_factor,
      "n_hat": encoding.n_hat,
  }
  record.update(extra or {})
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)


def load_factors(path: str, *, head_dim: int | None = None, **overrides) -> LongRoPE:
  """Reads a factor file into a LongRoPE config; a different head_dim is an error."""
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"LongRoPE factor file not found: {path}") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"LongRoPE factor file {path} is not valid JSON: {e}") from None
  if record.get("format") != FACTOR_FILE_FORMAT:
    raise ConfigError(f"{path}: field 'format' must be {FACTOR_FILE_FORMAT!r}, got {record.get('format')!r}")
  if head_dim is not None and record["head_dim"] != head_dim:
    raise ConfigError(f"{path}: factors were searched for head_dim {record['head_dim']}, model has {head_dim}")
  fields = {f.name for f in dataclasses.fields(LongRoPE)}
  params = {k: v for k, v in record.items() if k in fields}
  params.update(overrides)
  return LongRoPE(**params)
