"""Checks that an encoding can represent a window length before anything is computed.

xPos scales q and k by zeta^(+-n / scale_base) with centred positions n; beyond
``pe.bias_and_scales.xpos_overflow_length`` the scales leave the compute dtype's range and
the loss becomes inf/NaN. A window that long is refused here with the limit, instead of a
``loss nan`` row in results.jsonl.
"""

from __future__ import annotations

import math

import numpy as np

from rope_lab.errors import ConfigError
from rope_lab.pe.bias_and_scales import XPos, xpos_overflow_length


def _max_log(dtype_name: str) -> float:
  # q and k are scaled in float32 (pe.bias_and_scales); a narrower compute dtype than
  # float32 with a smaller range (float16) would be the limit instead.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  largest = min(float(jnp.finfo(jnp.dtype(dtype_name)).max), float(np.finfo(np.float32).max))
  return math.log(largest)


def check_xpos_length(encoding, *, head_dim: int, compute_dtype: str, length: int,
                      where: str) -> None:
  """Raises ConfigError naming ``where`` if xPos overflows ``compute_dtype`` at ``length``."""
  if not isinstance(encoding, XPos):
    return
  limit = xpos_overflow_length(encoding.rotary_dim(head_dim), encoding.gamma,
                               encoding.scale_base, _max_log(compute_dtype))
  if length > limit:
    raise ConfigError(
        f"{where}={length} is beyond xPos's overflow length {limit} for head_dim={head_dim}, "
        f"gamma={encoding.gamma}, scale_base={encoding.scale_base} in {compute_dtype}: its q/k "
        f"scales would overflow and every loss would be inf/NaN; use windows of at most {limit} "
        f"tokens (or a larger scale_base)")
