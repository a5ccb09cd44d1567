"""ALiBi (Press et al. 2022): an additive logit bias -m_h |i - j|, no rotary or absolute table."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from rope_lab.pe.base import Encoding, check, register


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
