"""Frequency scalings: RoPE and the methods that only change its frequencies or its attention scale.

Each method is a frozen config plus one or two pure functions of (rotary_dim, base, ...)
returning float64 inverse frequencies. Hugging Face transformers' ``rope_type`` names are
given where one exists; the parity tests compare against it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from rope_lab.pe.base import ROTARY_LAYOUTS, ConfigError, Encoding, check, choice, register, required
from rope_lab.pe.rotary import default_inv_freq

# ----------------------------------------------------------------------------- maths


def ntk_base(base: float, alpha: float, rotary_dim: int) -> float:
  """NTK-aware base change: base * alpha^(d/(d-2)) keeps the slowest pair's wavelength x alpha."""
  return base * alpha ** (rotary_dim / (rotary_dim - 2))


def dynamic_ntk_base(base: float, factor: float, seq_len: int, original: int, rotary_dim: int) -> float:
  """transformers' rope_type "dynamic": alpha = factor * L / L_orig - (factor - 1), L >= L_orig.

  Note ``factor`` is not the length ratio: at L = 2 L_orig with factor 2 the effective
  alpha is 3. Only at factor 1 does alpha equal L / L_orig.
  """
  length = max(seq_len, original)
  alpha = factor * length / original - (factor - 1.0)
  return ntk_base(base, alpha, rotary_dim)


def yarn_correction_range(
    beta_fast: float, beta_slow: float, rotary_dim: int, base: float, original: int, truncate: bool
) -> tuple[float, float]:
  """Pair indices where a full period spans beta_fast and beta_slow rotations over L_orig."""

  def pair_for(rotations: float) -> float:
    return rotary_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low, high = pair_for(beta_fast), pair_for(beta_slow)
  if truncate:
    low, high = math.floor(low), math.ceil(high)
  return max(low, 0), min(high, rotary_dim - 1)


def yarn_inv_freq(
    rotary_dim: int, base: float, factor: float, original: int, beta_fast: float, beta_slow: float,
    truncate: bool,
) -> np.ndarray:
  """NTK-by-parts (Peng et al. 2023, eq. 17-19): extrapolate fast pairs, interpolate slow ones.

  theta'_i = (1 - gamma_i) theta_i / s + gamma_i theta_i, gamma_i a linear ramp from 1
  (pairs above beta_fast rotations over L_orig) to 0 (below beta_slow).
  """
  theta = default_inv_freq(rotary_dim, base)
  low, high = yarn_correction_range(beta_fast, beta_slow, rotary_dim, base, original, truncate)
  if low == high:
    high += 0.001  # as the reference: avoid a zero-width ramp
  ramp = np.clip((np.arange(rotary_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
  extrapolate = 1.0 - ramp
  return theta / factor * (1.0 - extrapolate) + theta * extrapolate


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  """sqrt(1/t) = 0.1 * mscale * ln(s) + 1 (YaRN eq. 22); 1 for s <= 1."""
  return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def llama3_inv_freq(
    rotary_dim: int, base: float, factor: float, low_freq_factor: float, high_freq_factor: float,
    original: int,
) -> np.ndarray:
  """Llama 3.1: wavelengths above L/low divide by s, below L/high keep, a smooth blend between."""
  theta = default_inv_freq(rotary_dim, base)
  wavelen = 2 * math.pi / theta
  smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
  blended = (1 - smooth) * theta / factor + smooth * theta
  out = np.where(wavelen > original / low_freq_factor, theta / factor, theta)
  medium = (wavelen >= original / high_freq_factor) & (wavelen <= original / low_freq_factor)
  return np.where(medium, blended, out)


def power_inv_freq(rotary_dim: int, base: float, factor: float, power: float) -> np.ndarray:
  """Giraffe power basis: theta_i / s * (1 - 2i/d)^k damps the slow pairs towards zero."""
  theta = default_inv_freq(rotary_dim, base) / factor
  pairs = rotary_dim // 2
  return theta * (1.0 - np.arange(pairs, dtype=np.float64) / pairs) ** power


def truncated_inv_freq(
    rotary_dim: int, base: float, factor: float, cutoff_wavelength: float, zero_ratio: float,
    rho_ratio: float,
) -> np.ndarray:
  """Giraffe truncated basis: keep theta >= b, set rho in [a, b), 0 below a.

  b = 2 pi / cutoff_wavelength, a = b / zero_ratio, rho = b / rho_ratio (reference: 8, 16).
  """
  theta = default_inv_freq(rotary_dim, base) / factor
  b = 2 * math.pi / cutoff_wavelength
  out = np.where(theta < b, b / rho_ratio, theta)
  return np.where(theta < b / zero_ratio, 0.0, out)


def proportional_inv_freq(head_dim: int, base: float, rope_proportion: float) -> np.ndarray:
  """Proportional RoPE / p-RoPE: theta_i = base^(-2i/D) for the first floor(p D / 2) pairs, 0 after.

  The exponent runs over the whole head dimension D (unlike partial rotary, whose exponent
  runs over the rotated dims only), so the kept pairs are exactly RoPE's fastest ones and
  the slowest, low-frequency tail is left unrotated (Barbero et al. 2024; Gemma's
  rope_proportion; transformers' "proportional").
  """
  rope_angles = int(rope_proportion * head_dim // 2)
  theta = 1.0 / np.power(float(base), np.arange(0, 2 * rope_angles, 2, dtype=np.float64) / head_dim)
  return np.concatenate([theta, np.zeros(head_dim // 2 - rope_angles)])


def resonance_inv_freq(inv_freq: np.ndarray) -> np.ndarray:
  """Resonance RoPE: each wavelength 2 pi / theta rounded to the nearest integer number of tokens."""
  return 2 * math.pi / np.round(2 * math.pi / inv_freq)


def hope_inv_freq(rotary_dim: int, base: float, original: int) -> np.ndarray:
  """HoPE: RoPE with the pairs whose wavelength exceeds the training length set to 0 (unrotated).

  Those pairs never complete a period within L_orig; HoPE (Chen et al. 2024) blames them
  for the long-term decay and the failure to extrapolate, and keeps only the others.
  """
  theta = default_inv_freq(rotary_dim, base)
  return np.where(2 * math.pi / theta > original, 0.0, theta)


# ----------------------------------------------------------------------------- configs


@register
@dataclasses.dataclass(frozen=True)
class RoPE(Encoding):
  """RoPE (Su et al. 2021): rotate pair i of q and k by p * base^(-2i/d)."""

  name = "rope"
  paper = "Su et al. 2021, RoFormer"
  changes = "rotary frequencies"

  base: float = 10000.0  # theta
  rotary_fraction: float = 1.0  # leading fraction of each head's dims that rotate
  layout: str = choice("half", ROTARY_LAYOUTS)  # "half" (GPT-NeoX/Llama rotate-half) or "interleaved" (RoFormer/GPT-J)

  def validate(self):
    check(self.base > 1.0, self.name, "base", "> 1", self.base)
    check(0.0 < self.rotary_fraction <= 1.0, self.name, "rotary_fraction", "in (0, 1]", self.rotary_fraction)
    check(self.layout in ("half", "interleaved"), self.name, "layout", "'half' or 'interleaved'", self.layout)

  def rotary_dim(self, head_dim: int) -> int:
    dim = int(head_dim * self.rotary_fraction)
    if dim < 2 or dim % 2:
      raise ConfigError(
          f"{self.name}: rotary dimension head_dim * rotary_fraction = {head_dim} * "
          f"{self.rotary_fraction} -> {dim} must be even and >= 2"
      )
    return dim

  def layout_name(self) -> str:
    return self.layout

  def unscaled_inv_freq(self, head_dim: int) -> np.ndarray:
    return default_inv_freq(self.rotary_dim(head_dim), self.base)

  def inv_freq(self, head_dim: int, seq_len: int) -> np.ndarray:
    return self.unscaled_inv_freq(head_dim)


def _check_factor(method: str, factor, field: str = "factor"):
  check(factor is not None, method, field, "set (a number >= 1)", factor)
  check(factor >= 1.0, method, field, ">= 1", factor)


def _check_original(method: str, original):
  check(original is not None, method, "original_max_position_embeddings",
        "set (the pretraining context length)", original)
  check(original >= 2, method, "original_max_position_embeddings", ">= 2", original)


@register
@dataclasses.dataclass(frozen=True)
class LinearScaling(RoPE):
  """Position Interpolation (Chen et al. 2023): theta_i / s, i.e. positions p / s."""

  name = "pi"
  paper = "Chen et al. 2023, Position Interpolation"
  changes = "rotary frequencies"

  factor: float | None = required()

  def validate(self):
    super().validate()
    _check_factor(self.name, self.factor)

  def inv_freq(self, head_dim, seq_len):
    return self.unscaled_inv_freq(head_dim) / self.factor


@register
@dataclasses.dataclass(frozen=True)
class NTKAware(RoPE):
  """NTK-aware scaling (bloc97 2023): base' = base * alpha^(d/(d-2)), fixed alpha."""

  name = "ntk"
  paper = "bloc97 2023, NTK-aware scaled RoPE"
  changes = "rotary frequencies"

  alpha: float | None = required()

  def validate(self):
    super().validate()
    _check_factor(self.name, self.alpha, "alpha")

  def inv_freq(self, head_dim, seq_len):
    dim = self.rotary_dim(head_dim)
    return default_inv_freq(dim, ntk_base(self.base, self.alpha, dim))


@register
@dataclasses.dataclass(frozen=True)
class DynamicNTK(RoPE):
  """Dynamic NTK (emozilla 2023; transformers "dynamic"): alpha = s L / L_orig - (s - 1) for L > L_orig.

  Trap: ``factor`` is not the length ratio; at L = 2 L_orig and factor 2, alpha = 3.
  """

  name = "dynamic_ntk"
  paper = "emozilla 2023, Dynamically scaled RoPE"
  changes = "rotary frequencies (follow the current length)"

  factor: float | None = required()
  original_max_position_embeddings: int | None = required()

  def validate(self):
    super().validate()
    _check_factor(self.name, self.factor)
    _check_original(self.name, self.original_max_position_embeddings)

  def inv_freq(self, head_dim, seq_len):
    dim = self.rotary_dim(head_dim)
    base = dynamic_ntk_base(self.base, self.factor, seq_len, self.original_max_position_embeddings, dim)
    return default_inv_freq(dim, base)


@dataclasses.dataclass(frozen=True)
class _YarnRamp(RoPE):
  """The NTK-by-parts ramp shared by NTK-by-parts, YaRN and Dynamic YaRN."""

  original_max_position_embeddings: int | None = required()
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  truncate: bool = True  # floor/ceil the correction range as the reference does

  def validate(self):
    super().validate()
    _check_original(self.name, self.original_max_position_embeddings)
    check(self.beta_fast > self.beta_slow > 0, self.name, "beta_fast/beta_slow",
          "beta_fast > beta_slow > 0", (self.beta_fast, self.beta_slow))

  def yarn_factor(self, seq_len: int) -> float:
    return 1.0

  def inv_freq(self, head_dim, seq_len):
    return yarn_inv_freq(
        self.rotary_dim(head_dim), self.base, self.yarn_factor(seq_len),
        self.original_max_position_embeddings, self.beta_fast, self.beta_slow, self.truncate,
    )


@dataclasses.dataclass(frozen=True)
class _YarnTemperature(Encoding):
  """YaRN's attention temperature: q and k x (0.1 ln s + 1), or the mscale/mscale_all_dim ratio."""

  attention_factor: float | None = None  # overrides the formula when set
  mscale: float | None = None
  mscale_all_dim: float | None = None

  def validate(self):
    super().validate()
    if self.attention_factor is not None:
      check(self.attention_factor > 0, self.name, "attention_factor", "> 0", self.attention_factor)

  def attention_scaling(self, seq_len):
    if self.attention_factor is not None:
      return self.attention_factor
    factor = self.yarn_factor(seq_len)
    if self.mscale and self.mscale_all_dim:
      return yarn_mscale(factor, self.mscale) / yarn_mscale(factor, self.mscale_all_dim)
    return yarn_mscale(factor)


@register
@dataclasses.dataclass(frozen=True)
class NTKByParts(_YarnRamp):
  """NTK-by-parts (Peng et al. 2023, sec. 3.2): YaRN's interpolation without the temperature."""

  name = "ntk_by_parts"
  paper = "Peng et al. 2023, YaRN (sec. 3.2)"
  changes = "rotary frequencies"

  factor: float | None = required()

  def validate(self):
    super().validate()
    _check_factor(self.name, self.factor)

  def yarn_factor(self, seq_len: int) -> float:
    return self.factor


@register
@dataclasses.dataclass(frozen=True)
class YaRN(_YarnTemperature, NTKByParts):
  """YaRN (Peng et al. 2023): NTK-by-parts + q, k x (0.1 ln s + 1), so logits x its square.

  With ``mscale`` and ``mscale_all_dim`` set (DeepSeek form) the q/k factor is
  mscale(s, mscale) / mscale(s, mscale_all_dim); ``attention_factor`` overrides both.
  """

  name = "yarn"
  paper = "Peng et al. 2023, YaRN"
  changes = "rotary frequencies, attention temperature"


@register
@dataclasses.dataclass(frozen=True)
class DynamicYaRN(_YarnTemperature, _YarnRamp):
  """Dynamic YaRN (Peng et al. 2023, sec. 3.3): YaRN with s = max(1, L / L_orig) at the current length L."""

  name = "dynamic_yarn"
  paper = "Peng et al. 2023, YaRN (Dynamic scaling)"
  changes = "rotary frequencies, attention temperature (follow the current length)"

  def yarn_factor(self, seq_len: int) -> float:
    return max(1.0, seq_len / self.original_max_position_embeddings)


@register
@dataclasses.dataclass(frozen=True)
class Llama3(RoPE):
  """Llama 3.1 scaling: per-wavelength blend of PI (slow pairs) and plain RoPE (fast pairs)."""

  name = "llama3"
  paper = "Meta 2024, Llama 3.1"
  changes = "rotary frequencies"

  base: float = 500000.0
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def validate(self):
    super().validate()
    _check_factor(self.name, self.factor)
    _check_original(self.name, self.original_max_position_embeddings)
    check(self.high_freq_factor > self.low_freq_factor > 0, self.name, "high_freq_factor/low_freq_factor",
          "high_freq_factor > low_freq_factor > 0", (self.high_freq_factor, self.low_freq_factor))

  def inv_freq(self, head_dim, seq_len):
    return llama3_inv_freq(self.rotary_dim(head_dim), self.base, self.factor, self.low_freq_factor,
                           self.high_freq_factor, self.original_max_position_embeddings)


@register
@dataclasses.dataclass(frozen=True)
class PowerBasis(RoPE):
  """Giraffe power basis (Pal et al. 2023): theta_i / s * (1 - 2i/d)^power."""

  name = "power"
  paper = "Pal et al. 2023, Giraffe"
  changes = "rotary frequencies"

  factor: float = 1.0
  power: float = 0.5

  def validate(self):
    super().validate()
    _check_factor(self.name, self.factor)
    check(self.power >= 0, self.name, "power", ">= 0", self.power)

  def inv_freq(self, head_dim, seq_len):
    return power_inv_freq(self.rotary_dim(head_dim), self.base, self.factor, self.power)


@register
@dataclasses.dataclass(frozen=True)
class TruncatedBasis(RoPE):
  """Giraffe truncated basis (Pal et al. 2023): theta if theta >= b, rho if a <= theta < b, else 0."""

  name = "truncated"
  paper = "Pal et al. 2023, Giraffe"
  changes = "rotary frequencies"

  factor: float = 1.0
  cutoff_wavelength: float | None = required()  # b = 2 pi / cutoff_wavelength (tokens)
  zero_ratio: float = 8.0  # a = b / zero_ratio
  rho_ratio: float = 16.0  # rho = b / rho_ratio

  def validate(self):
    super().validate()
    _check_factor(self.name, self.factor)
    check(self.cutoff_wavelength is not None and self.cutoff_wavelength > 0, self.name,
          "cutoff_wavelength", "> 0 (tokens)", self.cutoff_wavelength)
    check(self.zero_ratio >= 1, self.name, "zero_ratio", ">= 1", self.zero_ratio)
    check(self.rho_ratio > 0, self.name, "rho_ratio", "> 0", self.rho_ratio)

  def inv_freq(self, head_dim, seq_len):
    return truncated_inv_freq(self.rotary_dim(head_dim), self.base, self.factor, self.cutoff_wavelength,
                              self.zero_ratio, self.rho_ratio)


@register
@dataclasses.dataclass(frozen=True)
class ProportionalRoPE(RoPE):
  """Proportional RoPE / p-RoPE (Barbero et al. 2024; Gemma 3): only the fastest fraction p of pairs rotate.

  theta_i = base^(-2i/D) / factor for i < floor(p D / 2), 0 for the low-frequency tail.
  p = 1 is RoPE and p = 0 is NoPE (the p-RoPE ablation). transformers: rope_type
  "proportional" with partial_rotary_factor = p.
  """

  name = "proportional"
  paper = "Barbero et al. 2024, Round and Round We Go (p-RoPE); Gemma 3"
  changes = "rotary frequencies (low-frequency tail unrotated)"

  rope_proportion: float = 1.0  # p: fraction of the head's pairs that rotate, fastest first
  factor: float = 1.0  # positions / factor (linear interpolation), as transformers applies it

  def validate(self):
    super().validate()
    check(0.0 <= self.rope_proportion <= 1.0, self.name, "rope_proportion", "in [0, 1]", self.rope_proportion)
    check(self.rotary_fraction == 1.0, self.name, "rotary_fraction",
          "1.0 (proportional RoPE spans the whole head; set rope_proportion instead)", self.rotary_fraction)
    _check_factor(self.name, self.factor)

  def inv_freq(self, head_dim, seq_len):
    return proportional_inv_freq(self.rotary_dim(head_dim), self.base, self.rope_proportion) / self.factor


@register
@dataclasses.dataclass(frozen=True)
class ResonanceRoPE(RoPE):
  """Resonance RoPE (Wang et al. 2024): theta_i = 2 pi / round(2 pi / theta_i), integer wavelengths."""

  name = "resonance"
  paper = "Wang et al. 2024, Resonance RoPE"
  changes = "rotary frequencies (rounded wavelengths)"

  def inv_freq(self, head_dim, seq_len):
    return resonance_inv_freq(self.unscaled_inv_freq(head_dim))


@register
@dataclasses.dataclass(frozen=True)
class HoPE(RoPE):
  """HoPE (Chen et al. 2024): RoPE without the pairs whose wavelength exceeds the training length."""

  name = "hope"
  paper = "Chen et al. 2024, HoPE: a positional encoding without long-term decay"
  changes = "rotary frequencies (low-frequency pairs unrotated)"

  original_max_position_embeddings: int | None = required()

  def validate(self):
    super().validate()
    _check_original(self.name, self.original_max_position_embeddings)

  def inv_freq(self, head_dim, seq_len):
    return hope_inv_freq(self.rotary_dim(head_dim), self.base, self.original_max_position_embeddings)
