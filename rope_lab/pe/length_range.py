"""Checks that an encoding can represent a window length before anything is computed.

xPos multiplies q by zeta^(-n / scale_base) and k by its inverse, with centred positions
n (q and k are scaled in float32). A scale s is usable only while s * |q| stays below
float32's largest value and |k| / s above its smallest normal one (2^-126); beyond that the
scores become inf/NaN or lose their precision to subnormals, and ``loss nan`` lands in
results.jsonl. The limit here keeps every scale within 2^110, i.e. leaves a factor 2^16
of head room for the q and k entries on both sides (entries of magnitude 2^-16 to 2^16
stay exact), and is computed with ``pe.xpos.xpos_overflow_length``.
"""

from __future__ import annotations

import math

import numpy as np

from rope_lab.errors import ConfigError
from rope_lab.pe.xpos import XPos, xpos_overflow_length


ENTRY_HEAD_ROOM = 2.0 ** 16


def largest_log_scale(dtype_name: str) -> float:
  """ln of the largest xPos scale that keeps q * s and k / s normal numbers of ``dtype_name``
  (and of float32, where the scaling happens) for entries within ENTRY_HEAD_ROOM of 1."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  logs = []
  for dtype in (np.float32, jnp.dtype(dtype_name)):
    info = jnp.finfo(dtype)
    logs.append(min(math.log(float(info.max)), -math.log(float(info.tiny))))
  return min(logs) - math.log(ENTRY_HEAD_ROOM)


def check_xpos_length(encoding, *, head_dim: int, compute_dtype: str, length: int,
                      where: str) -> None:
  """Raises ConfigError naming ``where`` if xPos overflows ``compute_dtype`` at ``length``."""
  if not isinstance(encoding, XPos):
    return
  limit = xpos_overflow_length(encoding.rotary_dim(head_dim), encoding.gamma,
                               encoding.scale_base, largest_log_scale(compute_dtype))
  if length > limit:
    raise ConfigError(
        f"{where}={length} is beyond xPos's overflow length {limit} for head_dim={head_dim}, "
        f"gamma={encoding.gamma}, scale_base={encoding.scale_base} in {compute_dtype}: its q/k "
        f"scales would leave the float range (losses inf/NaN or imprecise); use windows of at most {limit} "
        f"tokens (or a larger scale_base)")
