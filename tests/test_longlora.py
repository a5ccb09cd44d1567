"""LongLoRA fine-tuning: shifted sparse attention against the reference's own algorithm,
LoRA adapters against an independent unmerged forward, and the training run end to end."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab import attention, pe
from rope_lab.model import token_meta


def _softmax_attention(q, k, v, mask):
  """q [n, D], k/v [m, D], mask bool [n, m] -> [n, D] in float64."""
  s = q @ k.T / math.sqrt(q.shape[-1])
  s = np.where(mask, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)) @ v


def s2_attention_rolled(q, k, v, group):
  """LongLoRA's Algorithm 1 (``forward_noflashattn``): roll the second half of the heads by
  -G/2 along the sequence, cut into groups of G, causal attention per group, roll back.
  q/k/v [B, L, H, D] with k/v already repeated to H heads."""
  b, length, heads, dim = q.shape
  half = heads // 2

  def shift(x):
    x = x.copy()
    x[:, :, half:] = np.roll(x[:, :, half:], -group // 2, axis=1)
    return x.reshape(b, length // group, group, heads, dim)

  qs, ks, vs = shift(q), shift(k), shift(v)
  causal = np.tril(np.ones((group, group), bool))
  out = np.zeros_like(qs)
  for i in range(b):
    for n in range(length // group):
      for h in range(heads):
        out[i, n, :, h] = _softmax_attention(qs[i, n, :, h], ks[i, n, :, h], vs[i, n, :, h], causal)
  out = out.reshape(b, length, heads, dim)
  out[:, :, half:] = np.roll(out[:, :, half:], group // 2, axis=1)
  return out


def s2_attention_varlen(q, k, v, group):
  """LongLoRA's ``forward_flashattn``: the first half of the heads cut at 0, G, 2G, ..., the
  second half at G/2, 3G/2, ... (``cu_seqlens``), causal attention within each piece."""
  b, length, heads, dim = q.shape
  out = np.zeros_like(q)
  for h in range(heads):
    starts = list(range(0, length, group)) if h < heads // 2 else [0] + list(range(group // 2, length, group))
    bounds = starts + [length]
    for i in range(b):
      for lo, hi in zip(bounds[:-1], bounds[1:]):
        causal = np.tril(np.ones((hi - lo, hi - lo), bool))
        out[i, lo:hi, h] = _softmax_attention(q[i, lo:hi, h], k[i, lo:hi, h], v[i, lo:hi, h], causal)
  return out


@pytest.mark.parametrize("implementation,n_kv", [("reference", 4), ("dot_product", 2), ("chunked", 1)])
def test_s2_attention_matches_the_reference_algorithm(implementation, n_kv):
  b, length, heads, dim, group = 2, 16, 4, 8, 4
  rng = np.random.default_rng(0)
  q = rng.normal(size=(b, length, heads, dim))
  k, v = (rng.normal(size=(b, length, n_kv, dim)) for _ in range(2))
  hooks = pe.make("nope").hooks(head_dim=dim, n_heads=heads, d_model=heads * dim, seq_len=length)
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  meta, _ = token_meta(hooks, positions, None, segment_masking=False, rng=None)
  as_f32 = lambda x: jnp.asarray(x, jnp.float32)
  got = np.asarray(attention.attend_shifted_groups(
      as_f32(q), as_f32(k), as_f32(v), meta, hooks, group_size=group, implementation=implementation,
      chunk_size=8))

  k_full, v_full = (np.repeat(x, heads // n_kv, axis=2) for x in (k, v))  # HF repeat_kv
  rolled = s2_attention_rolled(q, k_full, v_full, group)
  varlen = s2_attention_varlen(q, k_full, v_full, group)
  np.testing.assert_allclose(got, varlen, atol=2e-5)
  # The roll version agrees everywhere but on the wrapped tokens of the shifted heads: the
  # first G/2 tokens, which it places behind the row's last G/2 tokens.
  wrapped = np.zeros((length, heads), bool)
  wrapped[: group // 2, heads // 2:] = True
  np.testing.assert_allclose(got[:, ~wrapped], rolled[:, ~wrapped], atol=2e-5)
  assert np.abs(rolled[:, wrapped] - varlen[:, wrapped]).max() > 1e-3  # they do see the future there
  # Beyond the first group the unshifted heads no longer see every earlier token.
  full = np.asarray(attention.attend(as_f32(q), as_f32(k), as_f32(v), meta, hooks, implementation="reference"))
  assert np.abs(full[:, group:, : heads // 2] - got[:, group:, : heads // 2]).max() > 1e-3
