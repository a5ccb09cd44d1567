"""xPos (Sun et al. 2022): RoPE whose q and k carry an exponential decay in position."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from rope_lab.pe.base import ROTARY_LAYOUTS, XposScales, check, choice, register
from rope_lab.pe.frequency_scalings import RoPE


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

  layout: str = choice("interleaved", ROTARY_LAYOUTS)  # the reference pairs adjacent dimensions
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
