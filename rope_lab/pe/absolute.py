"""Absolute position encodings and LongEmbed's ways to stretch them.

NoPE adds nothing. Sinusoidal APE (Vaswani et al. 2017) and learned APE add a table row
per position to the token embeddings. LongEmbed (Zhu et al. 2024) extends an APE model
trained on L positions without new parameters: parallel context windows (chunks of L
that attend only within themselves, positions restart), grouped positions floor(p/s),
recurrent positions p mod L, and interpolation (position p read at p / s, between rows).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from rope_lab.pe.base import ConfigError, Encoding, PositionMap, check, choice, register
from rope_lab.pe.query_scaling import check_temperature_tuning, temperature_tuning_query_scale

EXTENSIONS = ("none", "pcw", "grouped", "recurrent", "interpolate")
EXTENSION_MODES = ("per_input", "static")
SINUSOID_LAYOUTS = ("interleaved", "concat")


@register
@dataclasses.dataclass(frozen=True)
class NoPE(Encoding):
  """NoPE (Kazemnejad et al. 2023): no positional signal; causality alone orders tokens.

  With ``attn_temperature_tuning`` (Llama 4's NoPE layers) queries are scaled by
  1 + attn_scale * ln(1 + floor((p + 1) / floor_scale)).
  """

  name = "nope"
  paper = "Kazemnejad et al. 2023, NoPE; Llama 4 temperature tuning"
  changes = "nothing (optionally a query scale)"

  attn_temperature_tuning: bool = False
  floor_scale: float = 8192.0  # tokens per step of the temperature
  attn_scale: float = 0.1

  def validate(self):
    check_temperature_tuning(self.name, self.floor_scale, self.attn_scale)

  def extra_hooks(self, **unused):
    if not self.attn_temperature_tuning:
      return {}
    return {"query_scale": temperature_tuning_query_scale(self.floor_scale, self.attn_scale)}


def sinusoid_inv_freq(d_model: int, layout: str, min_timescale: float, max_timescale: float) -> np.ndarray:
  """Interleaved (Vaswani): 1 / max^(2i/D). Concat (tensor2tensor/MaxText): min * exp(-i * inc).

  tensor2tensor's ``get_timing_signal_1d`` sets inv_timescales = min_timescale *
  exp(-i * log(max/min) / (D/2 - 1)): it multiplies by min_timescale (so the fastest
  frequency is min_timescale, not 1/min_timescale); rope_lab follows it to load its models.
  """
  half = d_model // 2
  if layout == "interleaved":
    return 1.0 / np.power(max_timescale, np.arange(0, d_model, 2, dtype=np.float64) / d_model)
  increment = math.log(max_timescale / min_timescale) / max(half - 1, 1)
  return min_timescale * np.exp(-increment * np.arange(half, dtype=np.float64))


def longembed_group(extension_mode: str, seq_len: int, original: int | None, factor: float) -> int:
  """Group size of LongEmbed's grouped positions floor(p / g).

  Per input (the reference): g = ceil(n / L_orig) for an input of n tokens, so every input
  lands within the trained positions and short inputs keep g = 1. Static: g = s.
  """
  if extension_mode == "per_input":
    return max(1, math.ceil(seq_len / original))
  return int(factor)


def longembed_interpolation_scale(extension_mode: str, seq_len: int, original: int | None,
                                  factor: float) -> float:
  """Multiplier on positions for LongEmbed's interpolation: 1/s, or 1 for inputs <= L_orig per input."""
  if extension_mode == "per_input" and seq_len <= original:
    return 1.0
  return 1.0 / factor


@dataclasses.dataclass(frozen=True)
class _APEExtension(Encoding):
  """LongEmbed's training-free extensions, shared by the two absolute tables."""

  extension: str = choice("none", EXTENSIONS)  # LongEmbed's training-free extension
  original_max_position_embeddings: int | None = None  # L_orig, the trained length
  extension_factor: float = 1.0  # s (interpolate; grouped when extension_mode is 'static')
  # 'per_input' (the reference): the factor follows each input's length n; grouped uses
  # ceil(n / L_orig) and interpolation leaves n <= L_orig unscaled. 'static': s for every input.
  extension_mode: str = choice("per_input", EXTENSION_MODES)

  def validate(self):
    check(self.extension in EXTENSIONS, self.name, "extension", f"one of {EXTENSIONS}", self.extension)
    check(self.extension_mode in EXTENSION_MODES, self.name, "extension_mode", f"one of {EXTENSION_MODES}",
          self.extension_mode)
    per_input = self.extension_mode == "per_input"
    if self.extension in ("pcw", "recurrent") or per_input and self.extension in ("grouped", "interpolate"):
      check(self.original_max_position_embeddings is not None and self.original_max_position_embeddings >= 1,
            self.name, "original_max_position_embeddings",
            f">= 1 for extension {self.extension!r} (extension_mode {self.extension_mode!r})",
            self.original_max_position_embeddings)
    check(self.extension_factor >= 1, self.name, "extension_factor", ">= 1", self.extension_factor)
    if self.extension == "grouped" and per_input:
      check(self.extension_factor == 1, self.name, "extension_factor",
            "1 for extension 'grouped' per input (the group is ceil(seq_len / original_max_position_embeddings); "
            "extension_mode='static' fixes it)", self.extension_factor)
    if self.extension == "grouped" and not per_input:
      check(float(self.extension_factor).is_integer(), self.name, "extension_factor",
            "an integer group size for extension 'grouped'", self.extension_factor)

  def _group(self, seq_len: int) -> int:
    return longembed_group(self.extension_mode, seq_len, self.original_max_position_embeddings,
                           self.extension_factor)

  def _scale(self, seq_len: int) -> float:
    return longembed_interpolation_scale(self.extension_mode, seq_len, self.original_max_position_embeddings,
                                         self.extension_factor)

  def position_map(self, seq_len: int) -> PositionMap:
    trained = self.original_max_position_embeddings or 0
    period = trained if self.extension in ("pcw", "recurrent") else 0
    group = self._group(seq_len) if self.extension == "grouped" else 1
    scale = self._scale(seq_len) if self.extension == "interpolate" else 1.0
    window = trained if self.extension == "pcw" else 0
    return PositionMap(period=jnp.int32(period), group=jnp.int32(group), scale=jnp.float32(scale),
                       window=jnp.int32(window))

  def mapped_length(self, seq_len: int) -> float:
    """One past the largest (possibly fractional) position the table is read at."""
    if self.extension in ("pcw", "recurrent"):
      return min(seq_len, self.original_max_position_embeddings)
    if self.extension == "grouped":
      return (seq_len - 1) // self._group(seq_len) + 1
    if self.extension == "interpolate":
      return (seq_len - 1) * self._scale(seq_len) + 1
    return seq_len


@register
@dataclasses.dataclass(frozen=True)
class SinusoidalAPE(_APEExtension):
  """Sinusoidal APE (Vaswani et al. 2017): x_p += [sin(p w_i), cos(p w_i)], fixed table."""

  name = "sinusoidal"
  paper = "Vaswani et al. 2017; LongEmbed extensions: Zhu et al. 2024"
  changes = "absolute table"

  layout: str = choice("interleaved", SINUSOID_LAYOUTS)  # (sin, cos, sin, ...) or [sin | cos]
  min_timescale: float = 1.0
  max_timescale: float = 10000.0

  def validate(self):
    super().validate()
    check(self.layout in ("interleaved", "concat"), self.name, "layout", "'interleaved' or 'concat'", self.layout)
    check(0 < self.min_timescale < self.max_timescale, self.name, "min_timescale/max_timescale",
          "0 < min_timescale < max_timescale", (self.min_timescale, self.max_timescale))

  def extra_hooks(self, *, d_model, **unused):
    if d_model % 2:
      raise ConfigError(f"{self.name}: d_model must be even for a sin/cos table, got {d_model}")
    inv = sinusoid_inv_freq(d_model, self.layout, self.min_timescale, self.max_timescale)
    return {"absolute": "sinusoidal", "sinusoid_inv_freq": jnp.asarray(inv, jnp.float32),
            "sinusoid_layout": self.layout}


@register
@dataclasses.dataclass(frozen=True)
class LearnedAPE(_APEExtension):
  """Learned APE (GPT-2 style): a trained [max_length, d_model] table; the only method with parameters."""

  name = "learned"
  paper = "Radford et al. 2019 (GPT-2); LongEmbed extensions: Zhu et al. 2024"
  changes = "absolute table (parameters)"

  max_length: int = 512  # rows of the table

  def validate(self):
    super().validate()
    check(self.max_length >= 1, self.name, "max_length", ">= 1", self.max_length)

  def extra_hooks(self, *, seq_len, **unused):
    needed = self.mapped_length(seq_len)
    if needed > self.max_length:
      raise ConfigError(
          f"{self.name}: seq_len {seq_len} reads table row {math.ceil(needed) - 1} but max_length is "
          f"{self.max_length}; use extension 'pcw', 'grouped', 'recurrent' or 'interpolate'"
      )
    return {"absolute": "learned", "learned_length": self.max_length}
