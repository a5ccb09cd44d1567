"""Properties every rotary method must have, checked through the hooks the model uses."""

import numpy as np
import pytest

from rope_lab import pe
from rope_lab.pe import apply as pe_apply
from rope_lab.pe import rotary


HEAD_DIM, N_HEADS, D_MODEL = 32, 2, 64
ORIG = 64

ROTARY_METHODS = {
    "rope": dict(),
    "rope_interleaved": dict(name="rope", layout="interleaved"),
    "rope_partial": dict(name="rope", rotary_fraction=0.5),
    "pi": dict(factor=4.0),
    "ntk": dict(alpha=4.0),
    "dynamic_ntk": dict(factor=2.0, original_max_position_embeddings=ORIG),
    "ntk_by_parts": dict(factor=4.0, original_max_position_embeddings=ORIG),
    "yarn": dict(factor=4.0, original_max_position_embeddings=ORIG),
    "dynamic_yarn": dict(original_max_position_embeddings=ORIG),
    "llama3": dict(factor=4.0, original_max_position_embeddings=ORIG),
    "longrope": dict(short_factor=[1.0] * 8 + [1.5] * 8, long_factor=list(np.linspace(1, 4, 16)),
                     original_max_position_embeddings=ORIG, factor=4.0),
    "xpos": dict(),
    "power": dict(power=0.5),
    "truncated": dict(cutoff_wavelength=64.0),
    "randomized": dict(max_position=8192),
    "self_extend": dict(group_size=4, window=16, original_max_position_embeddings=ORIG),
    "proportional": dict(rope_proportion=0.5),
    "resonance": dict(),
    "hope": dict(original_max_position_embeddings=ORIG),
}


def make(key):
  params = dict(ROTARY_METHODS[key])
  return pe.make(params.pop("name", key), **params)


def rotate(enc, x_LxHxD, positions_L, seq_len):
  hooks = enc.hooks(head_dim=HEAD_DIM, n_heads=N_HEADS, d_model=D_MODEL, seq_len=seq_len)
  q, k = pe_apply.rotate_qk(hooks, x_LxHxD[None], x_LxHxD[None], positions_L[None], positions_L[None])
  return np.asarray(q[0], np.float64), np.asarray(k[0], np.float64)


@pytest.mark.parametrize("key", sorted(ROTARY_METHODS))
def test_position_zero_is_identity_and_norms_are_kept(key):
  enc = make(key)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, N_HEADS, HEAD_DIM)).astype(np.float32)
  seq_len = 256
  positions = np.concatenate([[0], rng.integers(1, seq_len, size=39)]).astype(np.int32)
  q, k = rotate(enc, x, positions, seq_len)
  if key != "xpos":  # xPos scales q and k (by zeta^(+-(p - c)/B)) by design
    np.testing.assert_allclose(q[0], x[0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("key", sorted(set(ROTARY_METHODS) - {"longrope"}))
def test_score_depends_only_on_relative_offset(key):
  """q_m . k_n == q_{m+t} . k_{n+t}. (LongRoPE with n_hat > 0 breaks it on purpose; see below.)"""
  enc = make(key)
  rng = np.random.default_rng(1)
  q = rng.normal(size=(1, N_HEADS, HEAD_DIM)).astype(np.float32)
  k = rng.normal(size=(1, N_HEADS, HEAD_DIM)).astype(np.float32)
  seq_len = 4096
  scores = []
  for shift in (0, 7, 1000, 3000):
    qm, _ = rotate(enc, q, np.array([shift + 20]), seq_len)
    _, kn = rotate(enc, k, np.array([shift + 3]), seq_len)
    scores.append(np.sum(qm * kn, axis=-1))
  for s in scores[1:]:
    np.testing.assert_allclose(s, scores[0], rtol=2e-4, atol=2e-4)


def test_longrope_n_hat_keeps_leading_positions_unscaled():
  params = dict(ROTARY_METHODS["longrope"])
  enc = pe.make("longrope", n_hat=8, **params)
  plain = pe.make("rope")
  x = np.random.default_rng(2).normal(size=(12, N_HEADS, HEAD_DIM)).astype(np.float32)
  positions = np.arange(12, dtype=np.int32)
  q_long, _ = rotate(enc, x, positions, seq_len=1024)
  q_plain, _ = rotate(plain, x, positions, seq_len=1024)
  np.testing.assert_allclose(q_long[:8], q_plain[:8], atol=1e-6)
  assert np.abs(q_long[8:] - q_plain[8:]).max() > 1e-3


@pytest.mark.parametrize("name,params", [
    ("pi", dict(factor=1.0)),
    ("ntk", dict(alpha=1.0)),
    ("ntk_by_parts", dict(factor=1.0, original_max_position_embeddings=ORIG)),
    ("yarn", dict(factor=1.0, original_max_position_embeddings=ORIG)),
    ("llama3", dict(factor=1.0, original_max_position_embeddings=ORIG, base=10000.0)),
    ("longrope", dict(short_factor=[1.0] * 16, long_factor=[1.0] * 16, original_max_position_embeddings=ORIG,
                      factor=1.0)),
    ("power", dict(power=0.0)),
    ("truncated", dict(cutoff_wavelength=1e9, zero_ratio=1e9)),
])
def test_factor_one_is_plain_rope(name, params):
  enc = pe.make(name, **params)
  plain = pe.make("rope")
  for seq_len in (16, 4096):
    np.testing.assert_allclose(enc.inv_freq(HEAD_DIM, seq_len), plain.inv_freq(HEAD_DIM, seq_len), rtol=1e-12)
    assert enc.attention_scaling(seq_len) == 1.0


@pytest.mark.parametrize("name,params", [
    ("dynamic_ntk", dict(factor=2.0, original_max_position_embeddings=ORIG)),
    ("dynamic_yarn", dict(original_max_position_embeddings=ORIG)),
])
def test_dynamic_methods_are_continuous_at_the_switch(name, params):
  enc = pe.make(name, **params)
  plain = pe.make("rope")
  for seq_len in (1, ORIG // 2, ORIG):
    np.testing.assert_allclose(enc.inv_freq(HEAD_DIM, seq_len), plain.inv_freq(HEAD_DIM, seq_len), rtol=1e-12)
    assert enc.attention_scaling(seq_len) == 1.0
  step = np.abs(enc.inv_freq(HEAD_DIM, ORIG + 1) / enc.inv_freq(HEAD_DIM, ORIG) - 1).max()
  assert step < 0.05  # one more token moves frequencies a little, not a jump
  assert abs(enc.attention_scaling(ORIG + 1) - 1.0) < 0.01


def test_longrope_switches_sets_at_the_original_length():
  enc = make("longrope")
  short = enc.inv_freq(HEAD_DIM, ORIG)
  long = enc.inv_freq(HEAD_DIM, ORIG + 1)
  base = pe.make("rope").inv_freq(HEAD_DIM, 1)
  np.testing.assert_allclose(short, base / np.asarray(ROTARY_METHODS["longrope"]["short_factor"]))
  np.testing.assert_allclose(long, base / np.asarray(ROTARY_METHODS["longrope"]["long_factor"]))


def test_half_and_interleaved_give_identical_scores_under_the_permutation():
  rng = np.random.default_rng(3)
  q = rng.normal(size=(24, N_HEADS, HEAD_DIM)).astype(np.float32)
  k = rng.normal(size=(24, N_HEADS, HEAD_DIM)).astype(np.float32)
  positions = rng.integers(0, 500, size=24).astype(np.int32)
  perm = rotary.interleaved_to_half(HEAD_DIM)
  half = pe.make("rope", layout="half")
  inter = pe.make("rope", layout="interleaved")
  q_h, _ = rotate(half, q[..., perm], positions, 512)
  _, k_h = rotate(half, k[..., perm], positions, 512)
  q_i, _ = rotate(inter, q, positions, 512)
  _, k_i = rotate(inter, k, positions, 512)
  np.testing.assert_allclose(np.einsum("qhd,khd->hqk", q_h, k_h), np.einsum("qhd,khd->hqk", q_i, k_i),
                             rtol=1e-4, atol=1e-4)
  # And the layouts really differ without the permutation.
  q_wrong, _ = rotate(half, q, positions, 512)
  assert np.abs(q_wrong - q_i).max() > 1e-2


def test_encoding_switch_keeps_hook_structure_for_rope_family():
  """Same tree structure => the jitted model does not recompile when only numbers change."""
  import jax

  shapes = set()
  for key in ("rope", "pi", "ntk", "dynamic_ntk", "yarn", "dynamic_yarn", "llama3", "power", "truncated"):
    hooks = make(key).hooks(head_dim=HEAD_DIM, n_heads=N_HEADS, d_model=D_MODEL, seq_len=1024)
    leaves, treedef = jax.tree_util.tree_flatten(hooks)
    shapes.add((treedef, tuple((x.shape, x.dtype) for x in leaves)))
  assert len(shapes) == 1
