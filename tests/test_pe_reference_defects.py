"""Behaviours an audit against each paper's own code found wrong; each test fails on the old code.

Expected values are worked from the reference repositories' formulas by hand:
google-deepmind/randomized_positional_encodings, dwzhu-pku/LongEmbed, tensor2tensor's
``get_timing_signal_1d``, microsoft/LongRoPE and transformers' ``_compute_longrope_parameters``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab import pe

from rope_lab.model import skeleton as model
from rope_lab.data.evaluation import Window
from rope_lab.evaluate import window_nll
from rope_lab.pe import apply as pe_apply
from rope_lab.pe import rotary


D, H = 16, 2
CFG = model.ModelConfig(vocab_size=32, d_model=D, n_layers=1, n_heads=H, mlp_dim=32)


def hooks(name, seq_len, **params):
  return pe.make(name, **params).hooks(head_dim=D // H, n_heads=H, d_model=D, seq_len=seq_len)


# ----------------------------------------------------------------------------- randomized positions


def expected_max_of_draw(k: int, n: int) -> float:
  """E[max] of k distinct uniform draws from {0..n-1}: k (n + 1) / (k + 1) - 1."""
  return k * (n + 1) / (k + 1) - 1


def test_randomized_draws_are_sorted_distinct_and_differ_by_row():
  h = hooks("randomized", 10, max_position=100)
  ints, _, _ = pe_apply.map_positions(h.positions, np.tile(np.arange(10), (3, 1)), rng=jax.random.key(0))
  ints = np.asarray(ints)
  assert ints.min() >= 0 and ints.max() < 100
  assert all(np.all(np.diff(row) > 0) for row in ints)
  assert not np.array_equal(ints[0], ints[1])


def test_randomized_positions_are_drawn_at_evaluation_too():
  """The reference's evaluation passes a fresh rng to model.apply: sorted draws, not 0..L-1."""
  positions = np.tile(np.arange(10), (4, 1))
  h = hooks("randomized", 10, max_position=100)
  ints = np.asarray(pe_apply.map_positions(h.positions, positions)[0])  # no rng: evaluation
  assert not np.array_equal(ints, positions)
  assert all(np.all(np.diff(row) > 0) for row in ints) and ints.max() < 100
  np.testing.assert_array_equal(ints, pe_apply.map_positions(h.positions, positions)[0])  # reproducible
  other_seed = hooks("randomized", 10, max_position=100, evaluation_seed=1)
  assert not np.array_equal(ints, pe_apply.map_positions(other_seed.positions, positions)[0])
  plain = hooks("randomized", 10, max_position=100, evaluation="plain")
  np.testing.assert_array_equal(pe_apply.map_positions(plain.positions, positions)[0], positions)
  # A draw of L distinct positions from [0, N) needs L <= N; plain evaluation may go beyond.
  with pytest.raises(pe.ConfigError, match="seq_len 200 exceeds max_position 100"):
    hooks("randomized", 200, max_position=100)
  hooks("randomized", 200, max_position=100, evaluation="plain")


def test_randomized_packed_segments_get_their_own_draw_over_the_whole_range():
  """A 3-token segment is a sorted draw of 3 from [0, N), not the first 3 of a 10-token draw."""
  n, rows = 100, 400
  packed = np.tile(np.array([0, 1, 2, 0, 1, 2, 3, 4, 5, 6]), (rows, 1))
  h = hooks("randomized", 10, max_position=n)
  ints = np.asarray(pe_apply.map_positions(h.positions, packed, rng=jax.random.key(3))[0])
  assert all(np.all(np.diff(r[:3]) > 0) and np.all(np.diff(r[3:]) > 0) for r in ints)
  assert all(len(set(r)) == 10 for r in ints)  # one draw without replacement per row
  # Means over 400 rows; the standard error of each is about 1.
  assert abs(ints[:, 2].mean() - expected_max_of_draw(3, n)) < 5  # 74.75 (a prefix would give 26.5)
  assert abs(ints[:, 9].mean() - expected_max_of_draw(7, n)) < 5  # 87.4 (a prefix would give 63.3)


def test_randomized_model_evaluation_is_not_plain_rope():
  params = model.init_params(CFG, hooks("rope", 8), jax.random.key(0))
  toks = jnp.asarray(np.random.RandomState(0).randint(0, 32, (2, 8)), jnp.int32)
  apply = lambda h: model.Transformer(CFG).apply({"params": params}, toks, hooks=h)
  rope = apply(hooks("rope", 8))
  sampled = apply(hooks("randomized", 8, max_position=64))
  assert not np.allclose(sampled, rope, atol=1e-4)
  np.testing.assert_allclose(apply(hooks("randomized", 8, max_position=64, evaluation="plain")), rope, atol=1e-6)


# ----------------------------------------------------------------------------- rotary tables


def test_rotary_tables_refuse_a_position_beyond_them():
  tables = rotary.rotary_tables(rotary.default_inv_freq(8, 10000.0), max_position=10, rotary_dim=8)
  beyond = tables.length  # first position the tables do not hold
  with pytest.raises(pe.ConfigError, match=f"position {beyond} is beyond"):
    rotary.cos_sin(tables, np.array([3, beyond]))
  # Traced positions cannot raise; they read NaN instead of the clamped last row.
  cos, sin = jax.jit(rotary.cos_sin)(tables, jnp.array([beyond, -1, 3]))
  assert np.all(np.isnan(cos[:2])) and np.all(np.isnan(sin[:2]))
  exact = 3 * rotary.default_inv_freq(8, 10000.0)
  np.testing.assert_allclose(cos[2], np.cos(exact), atol=1e-6)


def test_model_refuses_inputs_longer_than_its_hooks_eager_and_jitted():
  h = hooks("rope", 8)
  params = model.init_params(CFG, h, jax.random.key(0))
  toks = jnp.zeros((1, 12), jnp.int32)
  apply = lambda p, t, hk: model.Transformer(CFG).apply({"params": p}, t, hooks=hk)
  for fn in (apply, jax.jit(apply)):
    with pytest.raises(pe.ConfigError, match="position 11 is beyond the hooks, which were made for seq_len 8"):
      fn(params, toks, h)
  apply(params, toks[:, :8], h)  # up to the length is fine


def test_window_nll_refuses_windows_longer_than_its_hooks():
  h = hooks("yarn", 8, factor=2.0, original_max_position_embeddings=8)
  params = model.init_params(CFG, h, jax.random.key(0))
  ones = np.ones(12, np.int32)
  windows = [Window(inputs=ones, targets=ones, loss_mask=np.ones(12, np.float32))]
  with pytest.raises(pe.ConfigError, match="position 11 is beyond the hooks, which were made for seq_len 8"):
    window_nll(CFG, params, windows, h)


# ----------------------------------------------------------------------------- LongEmbed


@pytest.mark.parametrize("n,group", [(512, 1), (700, 2), (1024, 2), (1025, 3), (4096, 8)])
def test_longembed_grouped_factor_is_per_input_ceiling(n, group):
  """LongEmbed get_position_ids(mode='group'): factor = ceil(n / 512); pid // factor."""
  h = hooks("learned", n, extension="grouped", original_max_position_embeddings=512, max_length=512)
  ints, _, _ = pe_apply.map_positions(h.positions, np.arange(n)[None])
  np.testing.assert_array_equal(ints[0], np.arange(n) // group)
  assert int(ints.max()) < 512


def test_longembed_interpolation_leaves_short_inputs_alone():
  """LongEmbed mode='interpolate': inputs <= L_orig keep their positions, longer ones read p / s."""
  spec = dict(extension="interpolate", original_max_position_embeddings=512, extension_factor=4.0, max_length=512)
  short = hooks("learned", 300, **spec)
  np.testing.assert_allclose(pe_apply.map_positions(short.positions, np.arange(300)[None])[1][0], np.arange(300))
  long = hooks("learned", 2000, **spec)
  np.testing.assert_allclose(pe_apply.map_positions(long.positions, np.arange(2000)[None])[1][0],
                             np.arange(2000) / 4.0)
  static = hooks("learned", 300, **spec, extension_mode="static")  # the old behaviour, kept as an option
  np.testing.assert_allclose(pe_apply.map_positions(static.positions, np.arange(300)[None])[1][0],
                             np.arange(300) / 4.0)


def test_longembed_per_input_grouped_needs_no_integer_ratio():
  """A window of 40 tokens over a 16-token model: the reference takes ceil(40 / 16) = 3."""
  h = hooks("learned", 40, extension="grouped", original_max_position_embeddings=16, max_length=16)
  assert int(h.positions.group) == 3
  with pytest.raises(pe.ConfigError, match="'extension_factor' must be 1 for extension 'grouped' per input"):
    pe.make("learned", extension="grouped", original_max_position_embeddings=16, extension_factor=2.5)
  with pytest.raises(pe.ConfigError, match="an integer group size"):
    pe.make("learned", extension="grouped", extension_mode="static", extension_factor=2.5)


# ----------------------------------------------------------------------------- sinusoidal concat


def test_sinusoidal_concat_with_min_timescale_matches_tensor2tensor():
  """get_timing_signal_1d: inv_timescales = min * exp(-i log(max/min) / (D/2 - 1)); [sin | cos]."""
  d, lo, hi, p = 8, 2.0, 1.0e3, 7.0
  increment = math.log(hi / lo) / (d // 2 - 1)
  inv = [lo * math.exp(-i * increment) for i in range(d // 2)]  # 2, 2/10^1, ... by hand
  expected = [math.sin(p * w) for w in inv] + [math.cos(p * w) for w in inv]
  h = pe.make("sinusoidal", layout="concat", min_timescale=lo, max_timescale=hi).hooks(
      head_dim=2, n_heads=4, d_model=d, seq_len=8)
  table = np.asarray(pe_apply.absolute_embedding(h, np.array([p])))[0]
  np.testing.assert_allclose(table, expected, atol=1e-6)


# ----------------------------------------------------------------------------- LongRoPE


def test_longrope_attention_factor_defaults_to_max_over_original():
  """transformers: factor = max_position_embeddings / original when absent; sqrt(1 + ln s / ln L)."""
  spec = dict(short_factor=[1.0] * 4, long_factor=[2.0] * 4, original_max_position_embeddings=4096)
  enc = pe.make("longrope", max_position_embeddings=131072, **spec)
  expected = math.sqrt(1 + math.log(32) / math.log(4096))  # 1.1902...
  assert enc.attention_scaling(1000) == pytest.approx(expected, rel=1e-12)
  assert enc.attention_scaling(100000) == pytest.approx(expected, rel=1e-12)
  # Neither the ratio nor the attention factor: refused rather than silently 1.
  with pytest.raises(pe.ConfigError, match="'factor' must be set"):
    pe.make("longrope", **spec)
  assert pe.make("longrope", attention_factor=1.5, **spec).attention_scaling(10) == 1.5


def test_longrope_n_hat_applies_only_in_the_long_regime():
  """microsoft/LongRoPE keeps the first start_token rows only in the long (rescaled) embedding."""
  spec = dict(short_factor=[2.0] * 4, long_factor=[4.0] * 4, original_max_position_embeddings=64, factor=4.0,
              n_hat=8)
  enc = pe.make("longrope", **spec)
  inv = rotary.default_inv_freq(8, 10000.0)
  short = enc.hooks(head_dim=8, n_heads=1, d_model=8, seq_len=32)
  cos, _ = rotary.cos_sin(short.rotary, np.array([3]))
  np.testing.assert_allclose(cos[0], np.cos(3 * inv / 2.0), atol=1e-6)  # short factors, no n_hat
  long = enc.hooks(head_dim=8, n_heads=1, d_model=8, seq_len=256)
  cos, _ = rotary.cos_sin(long.rotary, np.array([3, 20]))
  np.testing.assert_allclose(cos[0], np.cos(3 * inv), atol=1e-6)  # n_hat: unscaled
  np.testing.assert_allclose(cos[1], np.cos(20 * inv / 4.0), atol=1e-6)
