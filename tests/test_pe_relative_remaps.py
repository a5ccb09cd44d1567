"""Relative-position remapping (ReRoPE, Leaky ReRoPE, STRING, Dual Chunk Attention) against
the reference repositories' arithmetic, worked by hand in float64.

``attention_by_hand`` computes causal attention with each pair rotated by its relative
position phi_ij directly: q_i R(phi) k_j = (q1.k1 + q2.k2) cos(phi theta) + (q1.k2 - q2.k1)
sin(phi theta) per rotate-half pair. The phi matrices below are written from the
references: jquesnelle/yarn ``LlamaReRoPE.py`` (ReRoPE), Su's leaky rule w + (d - w)/k,
STRING's shifted positions (An et al. 2024, Algorithm 1) and HKUNLP/ChunkLlama's
``chunkllama_attn_replace.py`` cos/sin tables (q_t, qc_t, k_t).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab import pe

from rope_lab.model import attention

from rope_lab.model import attention_fused
from rope_lab.errors import ConfigError
from rope_lab.pe import relative_remaps
from rope_lab.pe.rotary import default_inv_freq


B, L, H, K, DH, CHUNK = 2, 20, 4, 2, 8, 8


# Jitted: one compilation per shape and path, where eager calls compile every operation.
ATTEND = jax.jit(attention.attend, static_argnames=("implementation", "chunk_size", "soft_cap", "fused_kernel",
                                                    "packed"))


def qkv(seed):
  rng = np.random.RandomState(seed)
  return tuple(rng.standard_normal((B, L, n, DH)).astype(np.float32) for n in (H, K, K))


def attention_by_hand(q, k, v, phi_LxL, inv_freq, q_scale_L=None):
  """float64 causal attention; pair (i, j) rotated by phi[i, j] (rotate-half layout)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  if q_scale_L is not None:
    q = q * q_scale_L[None, :, None, None]
  k, v = np.repeat(k, H // K, axis=2), np.repeat(v, H // K, axis=2)
  p = DH // 2
  q1, q2, k1, k2 = q[..., :p], q[..., p:], k[..., :p], k[..., p:]
  angle = phi_LxL[:, :, None] * inv_freq[None, None, :]
  cos, sin = np.cos(angle), np.sin(angle)
  s = (np.einsum("bihp,bjhp,ijp->bhij", q1, k1, cos) + np.einsum("bihp,bjhp,ijp->bhij", q2, k2, cos)
       + np.einsum("bihp,bjhp,ijp->bhij", q1, k2, sin) - np.einsum("bihp,bjhp,ijp->bhij", q2, k1, sin))
  s = s / np.sqrt(DH)
  i, j = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
  s = np.where(i >= j, s, -np.inf)
  a = np.exp(s - s.max(-1, keepdims=True))
  a = a / a.sum(-1, keepdims=True)
  return np.einsum("bhij,bjhd->bihd", a, v)


def distances():
  i, j = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
  return i, j, (i - j).astype(np.float64)


def run(name, params, impl, q, k, v, positions=None, segments=None):
  hooks = pe.make(name, **params).hooks(head_dim=DH, n_heads=H, d_model=32, seq_len=L)
  pos = jnp.tile(jnp.arange(L)[None], (B, 1)) if positions is None else jnp.asarray(positions)
  seg = jnp.ones_like(pos) if segments is None else jnp.asarray(segments)
  meta = attention.TokenMeta(jnp.tile(jnp.arange(L)[None], (B, 1)), pos, seg, jnp.zeros_like(pos))
  return np.asarray(ATTEND(q, k, v, meta, hooks, implementation=impl, chunk_size=CHUNK))


def rerope_phi(window):
  _, _, d = distances()
  # LlamaReRoPE.py: |d| < window keeps the rotations at the positions; otherwise q is rotated
  # at `position_ids * 0 + window` and k is not rotated: phi = window - 0.
  return np.where(np.abs(d) < window, d, window)


def leaky_phi(window, leak):
  _, _, d = distances()
  return np.where(d < window, d, window + (d - window) / leak)


def string_phi(shifted_offset, local_value):
  _, _, d = distances()
  # STRING: a sliding window of S keeps RoPE; beyond, q positions shift by -S + W.
  return np.where(d < shifted_offset, d, d - shifted_offset + local_value)


def dual_chunk_phi(chunk_size, local_window):
  i, j, _ = distances()
  c = chunk_size - local_window  # chunkllama_attn_replace.py: chunk_len
  q_t = np.arange(c)
  qc_t = np.minimum(q_t + c, chunk_size)  # (q_t + chunk_len).clamp(max=chunk_size)
  k_t = j % c  # k_t = arange(...) % chunk_len
  intra = q_t[i % c] - k_t
  succ = qc_t[i % c] - k_t
  inter = qc_t[c - 1] - k_t  # q rotated at qc_cos[position_ids[:, chunk_len - 1]]
  gap = i // c - j // c
  return np.where(gap == 0, intra, np.where(gap == 1, succ, inter)).astype(np.float64)


CASES = [
    ("rerope", dict(window=5), rerope_phi(5), None),
    ("rerope", dict(window=5, training_length=6), rerope_phi(5),
     np.maximum(1.0, np.log(np.arange(L) + 1.0) / np.log(6.0))),  # the reference's LogN on q
    ("leaky_rerope", dict(window=4, leak=2.5), leaky_phi(4, 2.5), None),
    ("string", dict(shifted_offset=7, local_value=3), string_phi(7, 3), None),
    ("dual_chunk", dict(original_max_position_embeddings=16), dual_chunk_phi(12, 1), None),
    ("dual_chunk", dict(original_max_position_embeddings=16, chunk_size=8, local_window=3),
     dual_chunk_phi(8, 3), None),
]


@pytest.mark.parametrize("name, params, phi, q_scale", CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)])
def test_reference_and_chunked_match_the_reference_code_by_hand(name, params, phi, q_scale):
  q, k, v = qkv(0)
  want = attention_by_hand(q, k, v, phi, default_inv_freq(DH, 10000.0), q_scale)
  for impl in ("reference", "chunked", "fused"):  # fused falls back to chunked on every platform
    np.testing.assert_allclose(run(name, params, impl, q, k, v), want, atol=2e-5, err_msg=impl)


def test_by_hand_attention_is_rope_at_plain_distances():
  q, k, v = qkv(1)
  _, _, d = distances()
  want = attention_by_hand(q, k, v, d, default_inv_freq(DH, 10000.0))
  np.testing.assert_allclose(run("rope", {}, "reference", q, k, v), want, atol=2e-5)


def test_rules_reproduce_self_extend():
  g, w = 3, 4
  enc = pe.make("self_extend", group_size=g, window=w, original_max_position_embeddings=8)
  se_hooks = enc.hooks(head_dim=DH, n_heads=H, d_model=32, seq_len=L)
  rule_hooks = se_hooks.replace(self_extend=None, remap=tuple(relative_remaps.self_extend_rules(g, w)))
  q, k, v = qkv(2)
  pos = jnp.tile(jnp.arange(L)[None], (B, 1))
  meta = attention.TokenMeta(pos, pos, jnp.ones_like(pos), jnp.zeros_like(pos))
  for impl in ("reference", "chunked"):
    np.testing.assert_allclose(ATTEND(q, k, v, meta, rule_hooks, implementation=impl, chunk_size=CHUNK),
                               ATTEND(q, k, v, meta, se_hooks, implementation="reference"),
                               atol=2e-6, err_msg=impl)


def test_packed_segments_each_see_their_own_chunks():
  """Positions restart per packed segment, so a packed row equals its segments run alone."""
  q, k, v = qkv(3)
  params = dict(original_max_position_embeddings=16, chunk_size=6, local_window=2)
  cut = 9
  positions = np.concatenate([np.arange(cut), np.arange(L - cut)])[None].repeat(B, 0)
  segments = np.concatenate([np.ones(cut), 2 * np.ones(L - cut)])[None].repeat(B, 0).astype(np.int32)
  packed = run("dual_chunk", params, "chunked", q, k, v, positions, segments)
  hooks = pe.make("dual_chunk", **params).hooks(head_dim=DH, n_heads=H, d_model=32, seq_len=L)
  tail = slice(cut, L)
  n = L - cut
  pos = jnp.tile(jnp.arange(n)[None], (B, 1))
  meta = attention.TokenMeta(pos, pos, jnp.ones_like(pos), jnp.zeros_like(pos))
  alone = ATTEND(q[:, tail], k[:, tail], v[:, tail], meta, hooks, implementation="reference")
  np.testing.assert_allclose(packed[:, tail], alone, atol=2e-6)


def test_gradients_are_finite_and_match_between_paths():
  """STRING's shifted query positions go below 0 for early tokens (pairs the first rule
  takes); the clip keeps them inside the tables, so no NaN reaches the gradients."""
  q, k, v = qkv(4)
  hooks = pe.make("string", shifted_offset=9, local_value=2).hooks(head_dim=DH, n_heads=H, d_model=32, seq_len=L)
  pos = jnp.tile(jnp.arange(L)[None], (B, 1))
  meta = attention.TokenMeta(pos, pos, jnp.ones_like(pos), jnp.zeros_like(pos))
  grads = {}
  for impl in ("reference", "chunked"):
    loss = lambda q, k, v: jnp.sum(ATTEND(q, k, v, meta, hooks, implementation=impl,
                                                    chunk_size=CHUNK) ** 2)
    grads[impl] = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert all(np.all(np.isfinite(g)) for g in grads[impl]), impl
  for got, want in zip(grads["chunked"], grads["reference"]):
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_paths_that_cannot_merge_rules_refuse_them():
  q, k, v = qkv(5)
  hooks = pe.make("rerope", window=4).hooks(head_dim=DH, n_heads=H, d_model=32, seq_len=L)
  pos = jnp.tile(jnp.arange(L)[None], (B, 1))
  meta = attention.TokenMeta(pos, pos, jnp.ones_like(pos), jnp.zeros_like(pos))
  rot = attention.rotate(hooks, q, k, pos)
  with pytest.raises(ConfigError, match="dot_product.*remap"):  # attend() falls back; the path itself refuses
    attention.dot_product(rot, v, meta, hooks)
  hooks = pe.make("string", shifted_offset=8, local_value=2).hooks(head_dim=DH, n_heads=H, d_model=32, seq_len=L)
  features = attention_fused.features_of(hooks, packed=False, soft_cap=None)
  for platform in ("gpu", "tpu"):
    choice = attention_fused.choose_kernel("auto", platform, features)
    assert choice.kernel == attention_fused.FALLBACK and "remapping" in choice.reason, platform
  with pytest.raises(ConfigError, match="remapping"):
    attention_fused.choose_kernel("splash", "tpu", features)


@pytest.mark.parametrize("name, params, message", [
    ("rerope", dict(window=0), "'window' must be >= 1"),
    ("leaky_rerope", dict(window=3, leak=1.5), "window \\* \\(leak - 1\\) is whole"),
    ("leaky_rerope", dict(leak=1.0), "'leak' must be > 1"),
    ("string", dict(shifted_offset=8, local_value=8), "'local_value' must be in \\[0, shifted_offset=8\\)"),
    ("string", {}, "'shifted_offset' must be >= 1"),
    ("dual_chunk", dict(original_max_position_embeddings=16, chunk_size=4, local_window=4),
     "'local_window' must be in \\[1, chunk_size=4\\)"),
])
def test_bad_parameters_are_named(name, params, message):
  with pytest.raises(ConfigError, match=message):
    pe.make(name, **params)


def test_last_rule_must_take_every_pair():
  rules = relative_remaps.self_extend_rules(2, 4)[:1]
  with pytest.raises(ConfigError, match="last rule must take every pair"):
    relative_remaps.check_rules(rules)


def test_tables_cover_the_mapped_positions():
  """ReRoPE rotates q at the window even when the window exceeds the input length."""
  hooks = pe.make("rerope", window=64).hooks(head_dim=DH, n_heads=H, d_model=32, seq_len=L)
  assert hooks.rotary.length >= 65
  leaky = pe.make("leaky_rerope", window=4, leak=3.0).hooks(head_dim=DH, n_heads=H, d_model=32, seq_len=L)
  assert leaky.remap[1].rotary.length >= L + 8


def test_similarity_scores_follow_the_remapped_distance():
  """ReRoPE's score of a query d tokens after the key is RoPE's score at min(d, w)."""
  from rope_lab.pe import similarity  # pylint: disable=g-import-not-at-top
  probe = np.random.RandomState(6).standard_normal(DH)
  window = 5
  rerope = similarity.score_by_distance(pe.make("rerope", window=window), probe, probe, 12, seq_len=16)
  rope = similarity.score_by_distance(pe.make("rope"), probe, probe, 12, seq_len=16)
  np.testing.assert_allclose(rerope, rope[np.minimum(np.arange(13), window)], atol=1e-5)


def test_the_model_runs_remaps_through_reference_and_chunked_attention():
  """Through the whole Transformer (packed rows): 'chunked' and 'dot_product' (which falls
  back to 'chunked') equal 'reference'."""
  from rope_lab.model import skeleton as model  # pylint: disable=g-import-not-at-top
  cfg = model.ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=H, n_kv_heads=K, mlp_dim=64,
                          chunk_size=8, init_std=0.2)
  hooks = pe.make("dual_chunk", original_max_position_embeddings=8, chunk_size=6, local_window=2).hooks(
      head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=L)
  params = model.init_params(cfg, hooks, jax.random.key(0))
  tokens = jnp.asarray(np.random.RandomState(7).randint(0, 32, (B, L)), jnp.int32)
  positions = jnp.asarray(np.stack([np.r_[np.arange(9), np.arange(L - 9)], np.arange(L)]), jnp.int32)
  segments = jnp.asarray(np.stack([np.r_[np.ones(9), 2 * np.ones(L - 9)], np.ones(L)]), jnp.int32)
  logits = {}
  for impl in ("reference", "chunked", "dot_product"):
    forward = jax.jit(lambda p, h, m=model.Transformer(dataclasses.replace(cfg, attention=impl)): m.apply(
        {"params": p}, tokens, hooks=h, positions=positions, segment_ids=segments))
    logits[impl] = np.asarray(forward(params, hooks))
  for impl in ("chunked", "dot_product"):
    np.testing.assert_allclose(logits[impl], logits["reference"], atol=2e-5, err_msg=impl)
  assert np.all(np.isfinite(logits["reference"]))
