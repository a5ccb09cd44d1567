"""ALiBi, xPos and parallel-context-window attention against the papers' reference formulas.

Each expected output is computed per (query, key) pair in float64 from the reference
code's formulas (ofirpress/attention_with_linear_biases, microsoft/torchscale's XPOS,
LongEmbed's parallel context windows), not from rope_lab's attention, and every attention
implementation must match it. SelfExtend has its by-hand check in tests/test_attention.py.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab.model import attention
from tests.test_attention import ATOL, B, DH, L, hooks_for, meta_for, qkv, run



def alibi_reference_slopes(n_heads):
  """ofirpress get_slopes: the power-of-two series, then every other slope of the doubled one."""
  def power_of_2(n):
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))
    return [start * start ** i for i in range(n)]
  if math.log2(n_heads).is_integer():
    return power_of_2(n_heads)
  closest = 2 ** math.floor(math.log2(n_heads))
  return power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]


def rotate_interleaved(x, angle_scale):
  """torchscale rotate_every_two on pairs (x0, x1): (x0 cos - x1 sin, x1 cos + x0 sin), per pair."""
  angles, scale = angle_scale
  x0, x1 = x[0::2], x[1::2]
  out = np.empty_like(x)
  out[0::2] = (x0 * np.cos(angles) - x1 * np.sin(angles)) * scale
  out[1::2] = (x1 * np.cos(angles) + x0 * np.sin(angles)) * scale
  return out


def attend_by_hand(q, k, v, logit):
  """Causal softmax attention; ``logit(b, h, i, j, kv)`` returns the score or None (masked)."""
  n_heads, n_kv = q.shape[2], k.shape[2]
  out = np.zeros(q.shape)
  for b, h, i in np.ndindex(B, n_heads, L):
    kv = h // (n_heads // n_kv)
    scores = {j: logit(b, h, i, j, kv) for j in range(i + 1)}
    scores = {j: s for j, s in scores.items() if s is not None}
    top = max(scores.values())
    weights = {j: math.exp(s - top) for j, s in scores.items()}
    total = sum(weights.values())
    out[b, i, h] = sum(w / total * v[b, j, kv] for j, w in weights.items())
  return out


def check_all_paths(name, params, n_heads, n_kv, logit, seed):
  hooks = hooks_for(name, params, n_heads=n_heads)
  q, k, v = (np.asarray(x, np.float64) for x in qkv(seed, n_heads, n_kv))
  want = attend_by_hand(q, k, v, lambda *a: logit(q, k, *a))
  meta = meta_for(hooks, packed=False)
  args = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
  for impl in attention.IMPLEMENTATIONS:
    np.testing.assert_allclose(run(*args, meta, hooks, impl), want, atol=ATOL, err_msg=impl)


@pytest.mark.parametrize("n_heads,n_kv", [(4, 2), (6, 3)])
def test_alibi_matches_the_reference_slopes_and_bias(n_heads, n_kv):
  slopes = alibi_reference_slopes(n_heads)

  def logit(q, k, b, h, i, j, kv):
    return q[b, i, h] @ k[b, j, kv] / math.sqrt(DH) - slopes[h] * (i - j)
  check_all_paths("alibi", {}, n_heads, n_kv, logit, seed=11)


def test_xpos_matches_torchscale():
  """torchscale XPOS: scale_i = (2i + 0.4 d) / (1.4 d), raised to (n + min_pos) / scale_base with
  min_pos = -(L // 2) rounded down; q takes the scale, k its inverse; theta_i = 10000^(-2i/d)."""
  scale_base = 16.0
  zeta = (np.arange(0, DH, 2) + 0.4 * DH) / (1.4 * DH)
  theta = 1.0 / 10000 ** (np.arange(DH // 2) / (DH // 2))
  min_pos = -L // 2  # torchscale's -(length + offset) // 2: floor, so -ceil(L / 2)

  def q_at(x, n):
    return rotate_interleaved(x, (n * theta, zeta ** ((n + min_pos) / scale_base)))

  def k_at(x, n):
    return rotate_interleaved(x, (n * theta, zeta ** (-(n + min_pos) / scale_base)))

  def logit(q, k, b, h, i, j, kv):
    return q_at(q[b, i, h], i) @ k_at(k[b, j, kv], j) / math.sqrt(DH)
  check_all_paths("xpos", {"scale_base": scale_base}, 4, 2, logit, seed=12)


def test_parallel_context_windows_match_longembed():
  """Chunks of W tokens attend only within themselves and restart their positions (no rotary)."""
  window = 4

  def logit(q, k, b, h, i, j, kv):
    if i // window != j // window:
      return None
    return q[b, i, h] @ k[b, j, kv] / math.sqrt(DH)
  params = {"extension": "pcw", "original_max_position_embeddings": window, "max_length": window}
  check_all_paths("learned", params, 4, 2, logit, seed=13)
