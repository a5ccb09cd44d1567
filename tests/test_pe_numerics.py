"""sin/cos accuracy at long positions against a float64 reference."""

import numpy as np

from rope_lab import pe
from rope_lab.pe import rotary


def angle_error(cos, sin, exact_angles):
  got = np.arctan2(np.asarray(sin, np.float64), np.asarray(cos, np.float64))
  diff = np.mod(got - exact_angles + np.pi, 2 * np.pi) - np.pi
  return np.abs(diff).max()


def test_tables_stay_at_float32_rounding_up_to_two_to_the_twenty():
  head_dim = 128
  inv_freq = pe.make("rope").inv_freq(head_dim, 1)
  max_position = 2 ** 20
  tables = rotary.rotary_tables(inv_freq, max_position=max_position, rotary_dim=head_dim)
  rng = np.random.default_rng(0)
  positions = np.concatenate([np.arange(0, 4096), rng.integers(0, max_position, 4096),
                              np.arange(max_position - 4096, max_position)]).astype(np.int64)
  exact = positions[:, None].astype(np.float64) * inv_freq[None, :]
  cos, sin = rotary.cos_sin(tables, positions.astype(np.int32))
  err = angle_error(cos, sin, exact)
  assert err < 1e-6, err
  # The naive float32 product is far worse at these positions (the README quotes both).
  naive = positions[:, None].astype(np.float32) * inv_freq[None, :].astype(np.float32)
  naive_err = angle_error(np.cos(naive.astype(np.float64)), np.sin(naive.astype(np.float64)), exact)
  assert naive_err > 1e-2, naive_err
