"""RoPE's whole maths on one screen, in the form of Gemma's ``apply_rope``.

The model rotates through exact-angle tables (``rotary.py``: float64 angles on the host,
angle addition on device) so that long positions stay accurate; this function is the
plain float32 formula a reader can check by eye, and tests hold the table path to it.
Pairing is rotate-half (dimension i with i + D/2); the frequency exponent runs over the
whole head dimension D; the slowest 1 - rope_proportion of the pairs are left unrotated
(proportional RoPE); positions are divided by scale_factor (Position Interpolation).
"""

from __future__ import annotations

import jax.numpy as jnp


def apply_rope(inputs_BxLxHxD: jnp.ndarray, positions_BxL: jnp.ndarray, *, base_frequency: float,
               scale_factor: float = 1.0, rope_proportion: float = 1.0) -> jnp.ndarray:
  """Rotates q or k [B, L, H, D] at integer positions [B, L]; returns float32 [B, L, H, D]."""
  head_dim = inputs_BxLxHxD.shape[-1]
  rope_angles = int(rope_proportion * head_dim // 2)  # pairs that rotate, fastest first
  exponents_P = 2.0 * jnp.arange(head_dim // 2) / head_dim
  inv_freq_P = jnp.where(jnp.arange(head_dim // 2) < rope_angles, base_frequency ** -exponents_P, 0.0)
  angles_BxLxP = jnp.tensordot(positions_BxL.astype(jnp.float32), inv_freq_P, axes=0) / scale_factor
  cos_BxLx1xP = jnp.cos(angles_BxLxP)[..., None, :]  # one angle per pair, shared by the heads
  sin_BxLx1xP = jnp.sin(angles_BxLxP)[..., None, :]
  x = inputs_BxLxHxD.astype(jnp.float32)
  first_BxLxHxP, second_BxLxHxP = x[..., : head_dim // 2], x[..., head_dim // 2:]
  return jnp.concatenate([first_BxLxHxP * cos_BxLx1xP - second_BxLxHxP * sin_BxLx1xP,
                          second_BxLxHxP * cos_BxLx1xP + first_BxLxHxP * sin_BxLx1xP], axis=-1)
