"""Encodings that act on the attention logits: ALiBi's bias and xPos's q/k decay."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from rope_lab.pe.base import Encoding, XposScales, check, register
from rope_lab.pe.rope_family import RoPE


def alibi_slopes(n_heads: int, max_bias: float = 8.0) -> np.ndarray:
  """Press et al. 2022: geometric slopes 2^(-max_bias/n * h), h = 1..n.

  For n not a power of two, take the slopes of the largest power of two n2 < n and
  fill the rest with every other slope of 2 * n2 heads (the reference's rule).
  """

  def power_of_two_slopes(n: int) -> list[float]:
    start = 2.0 ** (-max_bias / n)
    return [start ** (h + 1) for h in range(n)]

  if n_heads & (n_heads - 1) == 0:
    return np.asarray(power_of_two_slopes(n_heads), np.float64)
  n2 = 2 ** math.floor(math.log2(n_heads))
  extra = power_of_two_slopes(2 * n2)[0::2][: n_heads - n2]
  return np.asarray(power_of_two_slopes(n2) + extra, np.float64)


@register
@dataclasses.dataclass(frozen=True)
class ALiBi(Encoding):
  """ALiBi (Press et al. 2022): logits += -m_h * |i - j|, no rotary or absolute table."""

  name = "alibi"
  paper = "Press et al. 2022, ALiBi"
  changes = "attention logit bias"

  max_bias: float = 8.0  # slopes are 2^(-max_bias * h / n_heads)

  def validate(self):
    check(self.max_bias > 0, self.name, "max_bias", "> 0", self.max_bias)

  def extra_hooks(self, *, n_heads, **unused):
    return {"alibi_slopes": jnp.asarray(alibi_slopes(n_heads, self.max_bias), jnp.float32)}


def xpos_zeta(rotary_dim: int, gamma: float) -> np.ndarray:
  """zeta_i = (2i/d + gamma) / (1 + gamma): fast pairs decay least."""
  return (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim + gamma) / (1.0 + gamma)


def xpos_overflow_length(rotary_dim: int, gamma: float, scale_base: float, max_log: float) -> int:
  """Longest sequence whose centred xPos scales stay below exp(max_log).

  The largest scale is zeta_0^(-L/2 / scale_base); float32 and bfloat16 share
  max_log = ln(3.4e38) = 88.7, float16 has ln(65504) = 11.1.
  """
  zeta_min = float(xpos_zeta(rotary_dim, gamma)[0])
  return int(2 * scale_base * max_log / -math.log(zeta_min))


@register
@dataclasses.dataclass(frozen=True)
class XPos(RoPE):
  """xPos (Sun et al. 2022): RoPE with q x zeta^(n/scale_base), k / zeta^(n/scale_base).

  The score decays as zeta^((m - n)/scale_base). Positions are centred (n - ceil(L/2)) as
  in the reference to halve the exponent range. With gamma 0.4 and scale_base 512 the
  scales overflow float32 and bfloat16 beyond about 72K tokens and float16 beyond 9K
  (``xpos_overflow_length``); q and k are scaled in float32 here.
  """

  name = "xpos"
  paper = "Sun et al. 2022, A Length-Extrapolatable Transformer (xPos)"
  changes = "rotary frequencies, q/k scales"

  layout: str = "interleaved"  # the reference pairs adjacent dimensions
  scale_base: float = 512.0
  gamma: float = 0.4

  def validate(self):
    super().validate()
    check(self.scale_base > 0, self.name, "scale_base", "> 0", self.scale_base)
    check(self.gamma > 0, self.name, "gamma", "> 0", self.gamma)

  def extra_hooks(self, *, head_dim, seq_len, **unused):
    zeta = xpos_zeta(self.rotary_dim(head_dim), self.gamma)
    return {
        "xpos": XposScales(
            zeta=jnp.asarray(zeta, jnp.float32),
            scale_base=jnp.float32(self.scale_base),
            center=jnp.float32((seq_len + 1) // 2),
        )
    }
