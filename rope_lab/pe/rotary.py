"""Rotary maths shared by every RoPE variant: frequencies, exact sin/cos, rotation.

Su et al. 2021, "RoFormer": pair (x_{2i}, x_{2i+1}) of a head is rotated by the angle
p * theta_i with theta_i = base^(-2i/d). GPT-NeoX/Llama pair dimension i with i + d/2
instead ("rotate-half"); the two layouts give identical scores under the permutation
``interleaved_to_half``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rope_lab.errors import ConfigError

TWO_PI = 2.0 * math.pi


@struct.dataclass
class RotaryTables:
  """cos/sin of position x frequency as coarse and fine tables (angle addition).

  angle(p) = angle(hi * fine_size) + angle(lo) with p = hi * fine_size + lo. Both
  parts are reduced modulo 2*pi in float64 on the host before rounding to float32, so
  the result stays at float32 rounding level at any position the tables cover.
  ``near_*`` hold plain (unscaled) rows for positions < near_count (LongRoPE's n_hat);
  they are empty when unused. near_count is an array so that candidates with different
  n_hat can share one table shape (a LongRoPE population scored in one call).
  """

  cos_coarse: jnp.ndarray  # [n_coarse, P]
  sin_coarse: jnp.ndarray
  cos_fine: jnp.ndarray  # [fine_size, P]
  sin_fine: jnp.ndarray
  cos_near: jnp.ndarray  # [n_near, P]; n_near may be 0
  sin_near: jnp.ndarray
  near_count: jnp.ndarray  # int32 scalar (or [N] for a population): positions below use near rows
  fine_size: int = struct.field(pytree_node=False)
  rotary_dim: int = struct.field(pytree_node=False)
  layout: str = struct.field(pytree_node=False)  # "half" (GPT-NeoX/Llama) or "interleaved"
  # Positions [0, length) are covered; a gather beyond reads NaN instead of a clamped row.
  length: int = struct.field(pytree_node=False, default=0)


def default_inv_freq(rotary_dim: int, base: float) -> np.ndarray:
  """theta_i = base^(-2i/d), i = 0 .. d/2-1, in float64."""
  exponents = np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim
  return 1.0 / np.power(float(base), exponents)


def _cos_sin_of(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  reduced = np.mod(angles, TWO_PI)  # float64 reduction keeps the float32 result exact-ish
  return np.cos(reduced).astype(np.float32), np.sin(reduced).astype(np.float32)


def rotary_tables(
    inv_freq: np.ndarray,
    *,
    max_position: int,
    rotary_dim: int,
    layout: str = "half",
    near_inv_freq: np.ndarray | None = None,
    near_size: int = 0,
    near_count=None,
) -> RotaryTables:
  """Builds coarse/fine cos-sin tables covering positions [0, max_position).

  Plain float32 ``position * inv_freq`` is off by about 0.004 rad at 128K and 0.06 rad
  at 1M for the fastest pairs. Here position = hi * F + lo and both angle parts are
  formed and reduced modulo 2*pi in float64, then combined on device with
  cos(a+b) = cos a cos b - sin a sin b; the error stays near float32 rounding (~2e-7).
  ``inv_freq`` may carry leading batch axes (a population of candidates); then
  ``near_count`` (default ``near_size``) may be one count per candidate, each at most
  ``near_size``, the number of near rows stored.
  """
  inv_freq = np.asarray(inv_freq, dtype=np.float64)
  if inv_freq.shape[-1] * 2 != rotary_dim:
    raise ValueError(
        f"inv_freq has {inv_freq.shape[-1]} pairs but rotary_dim={rotary_dim} needs {rotary_dim // 2}"
    )
  max_position = max(int(max_position), 1)
  fine = 1 << max(1, math.ceil(math.log2(max_position) / 2))  # ~sqrt(max_position)
  n_coarse = -(-max_position // fine)
  coarse_pos = np.arange(n_coarse, dtype=np.float64) * fine
  fine_pos = np.arange(fine, dtype=np.float64)
  cos_c, sin_c = _cos_sin_of(coarse_pos[:, None] * inv_freq[..., None, :])
  cos_f, sin_f = _cos_sin_of(fine_pos[:, None] * inv_freq[..., None, :])
  if near_size:
    near_pos = np.arange(near_size, dtype=np.float64)
    cos_n, sin_n = _cos_sin_of(near_pos[:, None] * np.asarray(near_inv_freq, np.float64)[None, :])
    cos_n = np.broadcast_to(cos_n, inv_freq.shape[:-1] + cos_n.shape)
    sin_n = np.broadcast_to(sin_n, inv_freq.shape[:-1] + sin_n.shape)
  else:
    cos_n = sin_n = np.zeros(inv_freq.shape[:-1] + (0, inv_freq.shape[-1]), np.float32)
  counts = np.broadcast_to(np.asarray(near_size if near_count is None else near_count, np.int32),
                           inv_freq.shape[:-1])
  if np.any(counts > near_size) or np.any(counts < 0):
    raise ValueError(f"near_count {near_count} must be in [0, near_size={near_size}]")
  if layout not in ("half", "interleaved"):
    raise ValueError(f"rotary layout must be 'half' or 'interleaved', got {layout!r}")
  return RotaryTables(
      cos_coarse=jnp.asarray(cos_c),
      sin_coarse=jnp.asarray(sin_c),
      cos_fine=jnp.asarray(cos_f),
      sin_fine=jnp.asarray(sin_f),
      cos_near=jnp.asarray(cos_n),
      sin_near=jnp.asarray(sin_n),
      near_count=jnp.asarray(counts),
      fine_size=fine,
      rotary_dim=rotary_dim,
      layout=layout,
      length=n_coarse * fine,
  )


def check_positions_fit(tables: RotaryTables, num_positions: int, *, seq_len: int = 0) -> None:
  """Raises ConfigError when positions [0, num_positions) reach past the tables.

  Used at trace time, where the sequence length is a static shape; a traced position
  beyond the tables reads NaN rows (see ``cos_sin``), never a clamped one.
  """
  if num_positions > tables.length:
    made_for = f"seq_len {seq_len}" if seq_len else f"{tables.length} positions"
    raise ConfigError(
        f"rotary tables: position {num_positions - 1} is beyond the hooks, which were made for "
        f"{made_for} (tables cover positions < {tables.length}); resolve the encoding at "
        f"seq_len >= {num_positions}")


def cos_sin(tables: RotaryTables, positions_BxL: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """float32 cos, sin [B, L, P] at integer positions [B, L] (angle addition; any leading shape)."""
  if not isinstance(positions_BxL, jax.core.Tracer) and np.size(positions_BxL):
    check_positions_fit(tables, int(np.max(np.asarray(positions_BxL))) + 1)
  positions_BxL = positions_BxL.astype(jnp.int32)
  n_coarse = tables.cos_coarse.shape[-2]
  hi_BxL = positions_BxL // tables.fine_size
  hi_BxL = jnp.where(hi_BxL < 0, n_coarse, hi_BxL)  # negative positions are out of range too, not wrapped
  lo_BxL = positions_BxL % tables.fine_size
  # A traced position past the tables reads NaN (loud) where plain indexing would clamp
  # to the last row and return a plausible but wrong angle.
  gather = lambda table: jnp.take(table, hi_BxL, axis=-2, mode="fill", fill_value=jnp.nan)
  cos_hi, sin_hi = gather(tables.cos_coarse), gather(tables.sin_coarse)
  cos_lo, sin_lo = tables.cos_fine[lo_BxL], tables.sin_fine[lo_BxL]
  cos_BxLxP = cos_hi * cos_lo - sin_hi * sin_lo
  sin_BxLxP = sin_hi * cos_lo + cos_hi * sin_lo
  n_near = tables.cos_near.shape[-2]
  if n_near:
    near_BxL = jnp.clip(positions_BxL, 0, n_near - 1)
    is_near_BxLx1 = (positions_BxL < tables.near_count)[..., None]
    cos_BxLxP = jnp.where(is_near_BxLx1, tables.cos_near[near_BxL], cos_BxLxP)
    sin_BxLxP = jnp.where(is_near_BxLx1, tables.sin_near[near_BxL], sin_BxLxP)
  return cos_BxLxP, sin_BxLxP


def apply_rotary(
    x_BxLxHxD: jnp.ndarray, cos_BxLxP: jnp.ndarray, sin_BxLxP: jnp.ndarray, *, rotary_dim: int, layout: str
) -> jnp.ndarray:
  """Rotates the first ``rotary_dim`` dims of x [B, L, H, D] by cos/sin [B, L, P].

  The rotation runs in float32 (angles never round to bfloat16) and the result is cast
  back to x's dtype. Dimensions past ``rotary_dim`` pass through (partial rotary).
  """
  dtype = x_BxLxHxD.dtype
  rot = x_BxLxHxD[..., :rotary_dim].astype(jnp.float32)
  rest = x_BxLxHxD[..., rotary_dim:]
  cos_BxLx1xP = cos_BxLxP[..., None, :]  # broadcast over heads
  sin_BxLx1xP = sin_BxLxP[..., None, :]
  if layout == "half":
    x1, x2 = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2 :]
    out = jnp.concatenate([x1 * cos_BxLx1xP - x2 * sin_BxLx1xP, x2 * cos_BxLx1xP + x1 * sin_BxLx1xP], axis=-1)
  else:
    x1, x2 = rot[..., 0::2], rot[..., 1::2]
    out = jnp.stack([x1 * cos_BxLx1xP - x2 * sin_BxLx1xP, x2 * cos_BxLx1xP + x1 * sin_BxLx1xP],
                    axis=-1).reshape(rot.shape)
  return jnp.concatenate([out.astype(dtype), rest], axis=-1) if rest.shape[-1] else out.astype(dtype)


def interleaved_to_half(rotary_dim: int) -> np.ndarray:
  """Permutation of head dims: x_half = x_interleaved[..., perm] gives equal scores."""
  return np.concatenate([np.arange(0, rotary_dim, 2), np.arange(1, rotary_dim, 2)])
