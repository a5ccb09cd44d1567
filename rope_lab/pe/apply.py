"""jnp functions the model skeleton calls with a resolved :class:`Hooks` value.

None of them knows which method produced the hooks: positions go through one affine /
modular map, rotary tables through angle addition, bias and scales through their arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rope_lab.pe.base import Hooks, IndexMap, KeyWindow, PositionMap, QueryScale, RemapRule, SelfExtend, XposScales
from rope_lab.errors import ConfigError
from rope_lab.pe.rotary import apply_rotary, check_positions_fit, cos_sin


def hooks_for_layer(hooks: Hooks, layer: int) -> Hooks:
  """The hooks attention uses in ``layer``: the per-layer entry, cycling, or ``hooks`` itself."""
  return hooks if hooks.layers is None else hooks.layers[layer % len(hooks.layers)]


def layer_period(hooks: Hooks) -> int:
  """How many layers one cycle of the per-layer hooks spans (1 when every layer is alike)."""
  return 1 if hooks.layers is None else len(hooks.layers)


def with_sliding_window(hooks: Hooks, size: int | None) -> Hooks:
  """``hooks`` with keys limited to the last ``size`` tokens (a model's sliding window, None:
  unchanged), intersected with the encoding's own key window; its sinks stay visible."""
  if size is None:
    return hooks
  own = hooks.key_window
  if own is None:
    return hooks.replace(key_window=KeyWindow(size=jnp.int32(size), sinks=jnp.int32(0)))
  return hooks.replace(key_window=own.replace(size=jnp.minimum(own.size, size)))


def check_sequence_length(hooks: Hooks, length: int) -> None:
  """Raises ConfigError when inputs of ``length`` tokens reach past what ``hooks`` were made for.

  A trace-time check (``length`` is a static shape). Hooks with rotary tables (and the
  length-dependent values that come with them) are resolved for one ``seq_len``; an input
  longer than that would read positions the tables do not hold.
  """
  for layer_hooks in hooks.layers or ():
    check_sequence_length(layer_hooks, length)
  if hooks.rotary is None:
    return
  if hooks.seq_len and length > hooks.seq_len:
    raise ConfigError(
        f"position {length - 1} is beyond the hooks, which were made for seq_len {hooks.seq_len}; "
        f"resolve the encoding at seq_len >= {length} (encoding.hooks(..., seq_len={length}))")
  check_positions_fit(hooks.rotary, length, seq_len=hooks.seq_len)


def randomized_positions(positions_BxL: jnp.ndarray, max_position: int, rng: jax.Array) -> jnp.ndarray:
  """Each packed segment's positions -> its own sorted draw of distinct positions from [0, N).

  Ruoss et al. 2023 give a sequence of L tokens a sorted draw of L distinct positions from
  [0, N). A row of packed segments gets one draw of L distinct values in random order:
  any set of slots then holds a uniform draw of its own size, so sorting the values within
  each segment (a lexicographic sort on (segment, value)) gives every segment its own
  sorted draw over [0, N), not a prefix of one row-wide draw. A segment starts where a
  position does not follow its predecessor by one.
  """
  length = positions_BxL.shape[-1]
  flat_NxL = positions_BxL.reshape(-1, length)
  keys = jax.random.split(rng, flat_NxL.shape[0])
  draws_NxL = jax.vmap(lambda k: jax.random.choice(k, max_position, (length,), replace=False))(keys)
  draws_NxL = draws_NxL.astype(jnp.int32)
  starts_NxL = jnp.concatenate(
      [jnp.ones_like(flat_NxL[:, :1], bool), flat_NxL[:, 1:] != flat_NxL[:, :-1] + 1], axis=1)
  segment_NxL = jnp.cumsum(starts_NxL, axis=1)
  _, sorted_NxL = jax.lax.sort((segment_NxL, draws_NxL), dimension=1, num_keys=2)
  return sorted_NxL.reshape(positions_BxL.shape)


def map_positions(
    pmap: PositionMap, positions_BxL: jnp.ndarray, *, rng: jax.Array | None = None
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """positions int [B, L] -> (int positions for rotary, float positions for tables, window ids).

  Randomized positions apply with an ``rng`` (training) and, when the map says so, without
  one (evaluation, a fixed key from ``randomize_seed``).
  """
  positions_BxL = positions_BxL.astype(jnp.int32)
  if pmap.randomize_range:
    if rng is None and pmap.randomize_at_evaluation:
      rng = jax.random.key(pmap.randomize_seed)
    if rng is not None:
      positions_BxL = randomized_positions(positions_BxL, pmap.randomize_range, rng)
  window_ids_BxL = jnp.where(pmap.window > 0, positions_BxL // jnp.maximum(pmap.window, 1), 0)
  wrapped_BxL = jnp.where(pmap.period > 0, positions_BxL % jnp.maximum(pmap.period, 1), positions_BxL)
  grouped_BxL = wrapped_BxL // pmap.group
  return grouped_BxL, grouped_BxL.astype(jnp.float32) * pmap.scale, window_ids_BxL


def sinusoid_table(inv_freq_P: jnp.ndarray, positions_BxL: jnp.ndarray, layout: str) -> jnp.ndarray:
  """float positions [B, L] -> [B, L, 2P]: interleaved (sin, cos, ...) or concat [sin | cos]."""
  angles_BxLxP = jnp.tensordot(positions_BxL, inv_freq_P, axes=0)  # outer product, no rank promotion
  sin, cos = jnp.sin(angles_BxLxP), jnp.cos(angles_BxLxP)
  if layout == "concat":
    return jnp.concatenate([sin, cos], axis=-1)
  return jnp.stack([sin, cos], axis=-1).reshape(angles_BxLxP.shape[:-1] + (2 * inv_freq_P.shape[-1],))


def learned_lookup(table_NxD: jnp.ndarray, positions_BxL: jnp.ndarray) -> jnp.ndarray:
  """Rows [B, L, D] of ``table_NxD`` at float positions, linearly interpolated between neighbours."""
  low = jnp.floor(positions_BxL)
  frac_BxLx1 = (positions_BxL - low)[..., None]
  low = jnp.clip(low.astype(jnp.int32), 0, table_NxD.shape[0] - 1)
  high = jnp.clip(low + 1, 0, table_NxD.shape[0] - 1)
  return table_NxD[low] * (1 - frac_BxLx1) + table_NxD[high] * frac_BxLx1


def absolute_embedding(hooks: Hooks, positions_BxL: jnp.ndarray, learned_table=None) -> jnp.ndarray | None:
  """What to add to the token embeddings [B, L, D] at float positions (None for none)."""
  if hooks.absolute == "sinusoidal":
    return sinusoid_table(hooks.sinusoid_inv_freq, positions_BxL, hooks.sinusoid_layout)
  if hooks.absolute == "learned":
    return learned_lookup(learned_table, positions_BxL)
  return None


def xpos_scales(xpos: XposScales, positions_BxL: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(q scale, k scale) [B, L, P] = zeta^(+-(p - center) / scale_base), in float32."""
  exponent_BxLx1 = (positions_BxL.astype(jnp.float32) - xpos.center)[..., None] / xpos.scale_base
  zeta_1x1xP = xpos.zeta.reshape((1,) * (exponent_BxLx1.ndim - 1) + (-1,))
  q_scale_BxLxP = jnp.power(zeta_1x1xP, exponent_BxLx1)
  return q_scale_BxLxP, 1.0 / q_scale_BxLxP


def query_scales(scale: QueryScale, positions_BxL: jnp.ndarray) -> jnp.ndarray:
  """float32 [B, L]: max(1, offset + slope * ln(shift + floor((p + 1) / divisor)))."""
  count_BxL = jnp.floor((positions_BxL.astype(jnp.float32) + 1.0) / scale.divisor)
  return jnp.maximum(1.0, scale.offset + scale.slope * jnp.log(scale.shift + count_BxL))


def scale_queries(hooks: Hooks, q_BxLxHxD: jnp.ndarray, q_pos_BxL: jnp.ndarray) -> jnp.ndarray:
  """q times the hooks' position-dependent query scale (q itself without one)."""
  if hooks.query_scale is None:
    return q_BxLxHxD
  scale_BxLx1x1 = query_scales(hooks.query_scale, q_pos_BxL)[..., None, None]
  return (q_BxLxHxD.astype(jnp.float32) * scale_BxLx1x1).astype(q_BxLxHxD.dtype)


def rotate_qk(hooks: Hooks, q_BxLxHxD: jnp.ndarray, k_BxLxKxD: jnp.ndarray, q_pos_BxL: jnp.ndarray,
              k_pos_BxL: jnp.ndarray):
  """Applies rotary (and xPos, and query scales) to q [B, Lq, H, D] and k [B, Lk, K, D] at integer positions."""
  q_BxLxHxD = scale_queries(hooks, q_BxLxHxD, q_pos_BxL)  # q only: the logits of query p grow by the factor
  if hooks.rotary is None:
    return q_BxLxHxD, k_BxLxKxD
  tables = hooks.rotary
  q_cos_BxLxP, q_sin_BxLxP = cos_sin(tables, q_pos_BxL)
  k_cos_BxLxP, k_sin_BxLxP = cos_sin(tables, k_pos_BxL)
  if hooks.xpos is not None:
    q_scale_BxLxP, _ = xpos_scales(hooks.xpos, q_pos_BxL)
    _, k_scale_BxLxP = xpos_scales(hooks.xpos, k_pos_BxL)
    q_cos_BxLxP, q_sin_BxLxP = q_cos_BxLxP * q_scale_BxLxP, q_sin_BxLxP * q_scale_BxLxP
    k_cos_BxLxP, k_sin_BxLxP = k_cos_BxLxP * k_scale_BxLxP, k_sin_BxLxP * k_scale_BxLxP
  kwargs = dict(rotary_dim=tables.rotary_dim, layout=tables.layout)
  return (apply_rotary(q_BxLxHxD, q_cos_BxLxP, q_sin_BxLxP, **kwargs),
          apply_rotary(k_BxLxKxD, k_cos_BxLxP, k_sin_BxLxP, **kwargs))


def alibi_bias(slopes_H: jnp.ndarray, q_pos_BxL: jnp.ndarray, k_pos_BxL: jnp.ndarray) -> jnp.ndarray:
  """[B, H, Lq, Lk] additive bias -m_h |i - j| from positions [B, Lq] and [B, Lk]."""
  distance_BxLxL = jnp.abs(q_pos_BxL[:, :, None] - k_pos_BxL[:, None, :]).astype(jnp.float32)
  return -slopes_H[None, :, None, None] * distance_BxLxL[:, None]


def self_extend_positions(se: SelfExtend, positions_BxL: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(grouped query positions, grouped key positions) [B, L] for the distant part of attention.

  q: floor(i/G) + W - floor(W/G); k: floor(j/G). Their difference at i - j = W equals
  W up to the rounding of floor, so the two regimes meet without a jump.
  """
  g, w = se.group, se.window
  return positions_BxL // g + w - w // g, positions_BxL // g


def self_extend_use_normal(se: SelfExtend, q_pos_BxL: jnp.ndarray, k_pos_BxL: jnp.ndarray) -> jnp.ndarray:
  """Merge rule [B, Lq, Lk]: True where the key is within the neighbour window (i - j < W)."""
  return (q_pos_BxL[:, :, None] - k_pos_BxL[:, None, :]) < se.window


def index_map(m: IndexMap, positions_BxL: jnp.ndarray) -> jnp.ndarray:
  """int32 [B, L]: max(0, min((p mod period) // group + offset, cap)) (see ``IndexMap``)."""
  positions_BxL = positions_BxL.astype(jnp.int32)
  wrapped_BxL = jnp.where(m.period > 0, positions_BxL % jnp.maximum(m.period, 1), positions_BxL)
  return jnp.clip(wrapped_BxL // m.group + m.offset, 0, m.cap)


def remap_applies(rule: RemapRule, q_pos_BxL: jnp.ndarray, k_pos_BxL: jnp.ndarray) -> jnp.ndarray:
  """bool [B, Lq, Lk]: low <= p_i // unit - p_j // unit < high."""
  gap_BxLxL = q_pos_BxL[:, :, None] // rule.unit - k_pos_BxL[:, None, :] // rule.unit
  return (gap_BxLxL >= rule.low) & (gap_BxLxL < rule.high)


def remap_rule_index(rules: tuple, q_pos_BxL: jnp.ndarray, k_pos_BxL: jnp.ndarray) -> jnp.ndarray:
  """int32 [B, Lq, Lk]: the first rule whose condition holds for each pair (the last takes the rest)."""
  index_BxLxL = jnp.full((q_pos_BxL.shape[0], q_pos_BxL.shape[1], k_pos_BxL.shape[1]), len(rules) - 1, jnp.int32)
  for r in reversed(range(len(rules) - 1)):
    index_BxLxL = jnp.where(remap_applies(rules[r], q_pos_BxL, k_pos_BxL), r, index_BxLxL)
  return index_BxLxL


def rotate_remapped(hooks: Hooks, q_BxLxHxD: jnp.ndarray, k_BxLxKxD: jnp.ndarray, q_pos_BxL: jnp.ndarray,
                    k_pos_BxL: jnp.ndarray) -> tuple[tuple, tuple]:
  """(q per rule, k per rule): q and k rotated at each remap rule's positions, each with the
  rule's own tables when it has them. Query scales use the token's own position p."""
  q_BxLxHxD = scale_queries(hooks, q_BxLxHxD, q_pos_BxL)
  plain = hooks.replace(query_scale=None, remap=None)
  qs, ks = [], []
  for rule in hooks.remap:
    tables = plain if rule.rotary is None else plain.replace(rotary=rule.rotary)
    q, k = rotate_qk(tables, q_BxLxHxD, k_BxLxKxD, index_map(rule.q, q_pos_BxL), index_map(rule.k, k_pos_BxL))
    qs.append(q)
    ks.append(k)
  return tuple(qs), tuple(ks)
