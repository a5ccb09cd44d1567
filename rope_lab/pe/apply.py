"""jnp functions the model skeleton calls with a resolved :class:`Hooks` value.

None of them knows which method produced the hooks: positions go through one affine /
modular map, rotary tables through angle addition, bias and scales through their arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rope_lab.pe.base import Hooks, PositionMap, SelfExtend, XposScales
from rope_lab.pe.rotary import apply_rotary, cos_sin


def map_positions(
    pmap: PositionMap, positions: jnp.ndarray, *, rng: jax.Array | None = None
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """positions int [B, L] -> (int positions for rotary, float positions for tables, window ids).

  Randomized positions apply only when an ``rng`` is given (training): each row draws
  sorted distinct positions from [0, randomize_range) and position p reads the p-th draw.
  """
  positions = positions.astype(jnp.int32)
  if pmap.randomize_range and rng is not None:
    length = positions.shape[-1]
    flat = positions.reshape(-1, length)
    keys = jax.random.split(rng, flat.shape[0])
    draws = jax.vmap(
        lambda k: jnp.sort(jax.random.choice(k, pmap.randomize_range, (length,), replace=False))
    )(keys)
    positions = jnp.take_along_axis(draws, jnp.clip(flat, 0, length - 1), axis=-1).reshape(positions.shape)
  window_ids = jnp.where(pmap.window > 0, positions // jnp.maximum(pmap.window, 1), 0)
  wrapped = jnp.where(pmap.period > 0, positions % jnp.maximum(pmap.period, 1), positions)
  grouped = wrapped // pmap.group
  return grouped, grouped.astype(jnp.float32) * pmap.scale, window_ids


def sinusoid_table(inv_freq: jnp.ndarray, positions: jnp.ndarray, layout: str) -> jnp.ndarray:
  """float positions [...] -> [..., D]: interleaved (sin, cos, ...) or concat [sin | cos]."""
  angles = jnp.tensordot(positions, inv_freq, axes=0)  # outer product [..., D/2], no rank promotion
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  if layout == "concat":
    return jnp.concatenate([sin, cos], axis=-1)
  return jnp.stack([sin, cos], axis=-1).reshape(angles.shape[:-1] + (2 * inv_freq.shape[-1],))


def learned_lookup(table: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
  """Rows of ``table`` at float positions, linearly interpolated between neighbours."""
  low = jnp.floor(positions)
  frac = (positions - low)[..., None]
  low = jnp.clip(low.astype(jnp.int32), 0, table.shape[0] - 1)
  high = jnp.clip(low + 1, 0, table.shape[0] - 1)
  return table[low] * (1 - frac) + table[high] * frac


def absolute_embedding(hooks: Hooks, positions: jnp.ndarray, learned_table=None) -> jnp.ndarray | None:
  """What to add to the token embeddings at float ``positions`` (None for none)."""
  if hooks.absolute == "sinusoidal":
    return sinusoid_table(hooks.sinusoid_inv_freq, positions, hooks.sinusoid_layout)
  if hooks.absolute == "learned":
    return learned_lookup(learned_table, positions)
  return None


def xpos_scales(xpos: XposScales, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(q scale, k scale) [..., L, P] = zeta^(+-(p - center) / scale_base), in float32."""
  exponent = (positions.astype(jnp.float32) - xpos.center)[..., None] / xpos.scale_base
  q_scale = jnp.power(xpos.zeta.reshape((1,) * (exponent.ndim - 1) + (-1,)), exponent)
  return q_scale, 1.0 / q_scale


def rotate_qk(hooks: Hooks, q: jnp.ndarray, k: jnp.ndarray, q_pos: jnp.ndarray, k_pos: jnp.ndarray):
  """Applies rotary (and xPos) to q [B, Lq, H, D] and k [B, Lk, Hk, D] at integer positions."""
  if hooks.rotary is None:
    return q, k
  tables = hooks.rotary
  q_cos, q_sin = cos_sin(tables, q_pos)
  k_cos, k_sin = cos_sin(tables, k_pos)
  if hooks.xpos is not None:
    q_scale, _ = xpos_scales(hooks.xpos, q_pos)
    _, k_scale = xpos_scales(hooks.xpos, k_pos)
    q_cos, q_sin = q_cos * q_scale, q_sin * q_scale
    k_cos, k_sin = k_cos * k_scale, k_sin * k_scale
  kwargs = dict(rotary_dim=tables.rotary_dim, layout=tables.layout)
  return apply_rotary(q, q_cos, q_sin, **kwargs), apply_rotary(k, k_cos, k_sin, **kwargs)


def alibi_bias(slopes: jnp.ndarray, q_pos: jnp.ndarray, k_pos: jnp.ndarray) -> jnp.ndarray:
  """[B, H, Lq, Lk] additive bias -m_h |i - j| from positions [B, Lq] and [B, Lk]."""
  distance = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)
  return -slopes[None, :, None, None] * distance[:, None]


def self_extend_positions(se: SelfExtend, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(grouped query positions, grouped key positions) for the distant part of attention.

  q: floor(i/G) + W - floor(W/G); k: floor(j/G). Their difference at i - j = W equals
  W up to the rounding of floor, so the two regimes meet without a jump.
  """
  g, w = se.group, se.window
  return positions // g + w - w // g, positions // g


def self_extend_use_normal(se: SelfExtend, q_pos: jnp.ndarray, k_pos: jnp.ndarray) -> jnp.ndarray:
  """Merge rule: True where the key is within the neighbour window (i - j < W)."""
  return (q_pos[:, :, None] - k_pos[:, None, :]) < se.window
