"""Methods transformers lacks, against values worked out from the papers' formulas by hand."""

import math

import jax
import numpy as np
import pytest

from rope_lab import pe
from rope_lab.pe import apply as pe_apply
from rope_lab.pe.xpos import xpos_overflow_length


def test_alibi_slopes_power_of_two_and_not():
  hooks = pe.make("alibi").hooks(head_dim=8, n_heads=8, d_model=64, seq_len=16)
  np.testing.assert_allclose(hooks.alibi_slopes, [2.0 ** -k for k in range(1, 9)])
  hooks = pe.make("alibi").hooks(head_dim=8, n_heads=4, d_model=32, seq_len=16)
  np.testing.assert_allclose(hooks.alibi_slopes, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8])
  # 6 heads: the 4-head slopes, then slopes 1 and 3 of the 8-head series.
  hooks = pe.make("alibi").hooks(head_dim=8, n_heads=6, d_model=48, seq_len=16)
  np.testing.assert_allclose(hooks.alibi_slopes, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3])


def test_alibi_bias_is_minus_slope_times_distance():
  slopes = np.array([0.5, 0.25], np.float32)
  q_pos = np.array([[0, 1, 2, 3]])
  bias = np.asarray(pe_apply.alibi_bias(slopes, q_pos, q_pos))
  assert bias.shape == (1, 2, 4, 4)
  assert bias[0, 0, 3, 0] == -1.5 and bias[0, 1, 3, 1] == -0.5 and bias[0, 1, 2, 2] == 0.0


def test_xpos_scales_by_hand():
  # d = 8, gamma = 0.4: zeta_i = (2i/8 + 0.4) / 1.4.
  zeta = np.array([0.4, 0.65, 0.9, 1.15]) / 1.4
  enc = pe.make("xpos")
  hooks = enc.hooks(head_dim=8, n_heads=1, d_model=8, seq_len=20)
  np.testing.assert_allclose(hooks.xpos.zeta, zeta, rtol=1e-6)
  assert float(hooks.xpos.center) == 10.0  # reference: min_pos = -(20 // 2)
  q_scale, k_scale = pe_apply.xpos_scales(hooks.xpos, np.array([0, 10, 15]))
  np.testing.assert_allclose(q_scale[0], zeta ** (-10 / 512), rtol=1e-6)
  np.testing.assert_allclose(q_scale[1], 1.0)
  np.testing.assert_allclose(k_scale[2], zeta ** (-5 / 512), rtol=1e-6)


def test_xpos_score_decays_with_distance_as_zeta_power():
  enc = pe.make("xpos")
  hooks = enc.hooks(head_dim=8, n_heads=1, d_model=8, seq_len=64)
  q_s, _ = pe_apply.xpos_scales(hooks.xpos, np.array([40]))
  _, k_s = pe_apply.xpos_scales(hooks.xpos, np.array([10]))
  zeta = (np.array([0.0, 2, 4, 6]) / 8 + 0.4) / 1.4
  np.testing.assert_allclose(np.asarray(q_s * k_s)[0], zeta ** (30 / 512), rtol=1e-5)


@pytest.mark.parametrize("dtype,max_log", [(np.float32, math.log(np.finfo(np.float32).max)),
                                           ("bfloat16", math.log(float(jax.numpy.finfo(jax.numpy.bfloat16).max)))])
def test_xpos_overflow_range(dtype, max_log):
  """Stated range: finite up to the computed length, overflow just beyond (float32 and bfloat16)."""
  length = xpos_overflow_length(64, 0.4, 512.0, max_log)
  assert 70000 < length < 75000  # about 72K for both: same exponent range
  jdt = jax.numpy.dtype(dtype)
  zeta0 = jax.numpy.asarray((0.4 / 1.4), jdt)
  inside = zeta0 ** jax.numpy.asarray(-(length - 200) / 2 / 512, jdt)
  beyond = zeta0 ** jax.numpy.asarray(-(length + 400) / 2 / 512, jdt)
  assert np.isfinite(float(inside)) and not np.isfinite(float(beyond))
  assert xpos_overflow_length(64, 0.4, 512.0, math.log(65504.0)) < 10000  # float16


def test_power_basis_by_hand():
  enc = pe.make("power", power=0.5, factor=2.0)
  theta = np.array([1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75])
  expected = theta / 2.0 * np.sqrt([1.0, 0.75, 0.5, 0.25])
  np.testing.assert_allclose(enc.inv_freq(8, 10), expected, rtol=1e-12)


def test_truncated_basis_by_hand():
  # theta = [1, 0.1, 0.01, 0.001] (d=8, base 10^4); b = 2 pi / 100 = 0.0628: 0.01 -> rho, 0.001 < b/8 -> 0.
  enc = pe.make("truncated", cutoff_wavelength=100.0)
  b = 2 * math.pi / 100.0
  np.testing.assert_allclose(enc.inv_freq(8, 10), [1.0, 0.1, b / 16, 0.0], rtol=1e-12)


def test_self_extend_positions_by_hand():
  enc = pe.make("self_extend", group_size=2, window=4, original_max_position_embeddings=64)
  hooks = enc.hooks(head_dim=8, n_heads=1, d_model=8, seq_len=32)
  q_g, k_g = pe_apply.self_extend_positions(hooks.self_extend, np.array([[10, 3]]))
  assert q_g.tolist() == [[10 // 2 + 4 - 2, 3 // 2 + 4 - 2]] and k_g.tolist() == [[5, 1]]
  use_normal = pe_apply.self_extend_use_normal(hooks.self_extend, np.array([[10]]), np.array([[7, 6, 3]]))
  assert use_normal.tolist() == [[[True, False, False]]]  # 10-7 = 3 < 4; 10-6 = 4 is outside


@pytest.mark.parametrize("extension,params,expected_int,expected_float,windows", [
    ("grouped", dict(extension_factor=2.0, extension_mode="static"), [0, 0, 1, 1, 2, 2, 3],
     [0, 0, 1, 1, 2, 2, 3], [0] * 7),
    # Per input (the reference): g = ceil(7 / 3) = 3.
    ("grouped", dict(original_max_position_embeddings=3), [0, 0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 1, 1, 2], [0] * 7),
    ("recurrent", dict(original_max_position_embeddings=3), [0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 0, 1, 2, 0], [0] * 7),
    ("pcw", dict(original_max_position_embeddings=3), [0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 0, 1, 2, 0],
     [0, 0, 0, 1, 1, 1, 2]),
    ("interpolate", dict(extension_factor=2.0, extension_mode="static"), list(range(7)),
     [0, 0.5, 1, 1.5, 2, 2.5, 3], [0] * 7),
    ("interpolate", dict(extension_factor=2.0, original_max_position_embeddings=4), list(range(7)),
     [0, 0.5, 1, 1.5, 2, 2.5, 3], [0] * 7),
    # Per input: an input no longer than L_orig = 8 keeps its positions.
    ("interpolate", dict(extension_factor=2.0, original_max_position_embeddings=8), list(range(7)),
     list(range(7)), [0] * 7),
])
def test_longembed_position_maps(extension, params, expected_int, expected_float, windows):
  enc = pe.make("learned", extension=extension, max_length=16, **params)
  hooks = enc.hooks(head_dim=8, n_heads=1, d_model=8, seq_len=7)
  ints, floats, window_ids = pe_apply.map_positions(hooks.positions, np.arange(7)[None])
  assert ints[0].tolist() == expected_int
  np.testing.assert_allclose(floats[0], expected_float)
  assert window_ids[0].tolist() == windows


def test_learned_interpolation_reads_between_rows():
  table = np.arange(12, dtype=np.float32).reshape(6, 2)
  out = pe_apply.learned_lookup(table, np.array([0.0, 0.5, 2.25]))
  np.testing.assert_allclose(out, [[0, 1], [1, 2], [4.5, 5.5]])


def test_sinusoidal_layouts_by_hand():
  d = 6
  enc = pe.make("sinusoidal", layout="interleaved")
  hooks = enc.hooks(head_dim=2, n_heads=3, d_model=d, seq_len=8)
  table = np.asarray(pe_apply.absolute_embedding(hooks, np.array([5.0])))[0]
  expected = []
  for i in range(d // 2):
    w = 1.0 / 10000 ** (2 * i / d)
    expected += [math.sin(5 * w), math.cos(5 * w)]
  np.testing.assert_allclose(table, expected, atol=1e-6)
  # tensor2tensor/MaxText: timescales geometric from 1 to 10^4 over d/2 - 1 steps, [sin | cos].
  enc = pe.make("sinusoidal", layout="concat")
  hooks = enc.hooks(head_dim=2, n_heads=3, d_model=d, seq_len=8)
  table = np.asarray(pe_apply.absolute_embedding(hooks, np.array([5.0])))[0]
  ws = [1.0, 10000 ** -0.5, 10000 ** -1.0]
  np.testing.assert_allclose(table, [math.sin(5 * w) for w in ws] + [math.cos(5 * w) for w in ws], atol=1e-6)
