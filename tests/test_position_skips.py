"""PoSE's position skips against dwzhu-pku/PoSE's ``train_pose.py`` sampling rules.

The reference, for a sequence of n tokens and target length N: rt1 = randint(1, (n+1)//2)
and rt = randint(0, N - n) (both inclusive, with lt = lt1 = 0); positions arange(n), the
first rt1 unchanged and the rest plus rt.
"""

import collections
import os

import numpy as np
import pytest

from rope_lab.data.position_skips import pose_positions
from rope_lab.errors import ConfigError, DataError



def decompose(positions):
  """(first chunk length, skip) of one sequence's PoSE positions."""
  jumps = np.flatnonzero(np.diff(positions) != 1)
  assert len(jumps) <= 1, positions
  if not len(jumps):  # a skip of 0, or a one-token sequence: r1 is not observable
    return None, 0
  return int(jumps[0]) + 1, int(positions[jumps[0] + 1] - positions[jumps[0]] - 1)


def test_draws_follow_the_reference_ranges_uniformly():
  n, target = 7, 15
  rng = np.random.default_rng(0)
  firsts, skips = collections.Counter(), collections.Counter()
  draws = 4000
  for _ in range(draws):
    pos = pose_positions(np.arange(n)[None], np.ones((1, n), np.int32), target, rng)[0]
    first, skip = decompose(pos)
    assert pos[0] == 0 and pos[-1] <= target - 1
    skips[skip] += 1
    if first is not None:
      firsts[first] += 1
  # randint(0, N - n) inclusive: 9 values; randint(1, (n + 1) // 2) inclusive: 1..4.
  assert sorted(skips) == list(range(target - n + 1))
  assert sorted(firsts) == [1, 2, 3, 4]
  for count in skips.values():
    assert abs(count - draws / 9) < 0.25 * draws / 9
  for count in firsts.values():
    assert abs(count - sum(firsts.values()) / 4) < 0.15 * sum(firsts.values()) / 4


def test_the_longest_distance_reaches_the_target_length():
  """A fine-tune at L covers relative distances up to N - 1."""
  n, target = 8, 64
  rng = np.random.default_rng(1)
  longest = max(int(np.ptp(pose_positions(np.arange(n)[None], np.ones((1, n)), target, rng)))
                for _ in range(2000))
  assert longest == target - 1


def test_each_packed_segment_gets_its_own_skip_and_padding_is_kept():
  positions = np.array([[0, 1, 2, 3, 0, 1, 2, 0, 0]])
  segments = np.array([[1, 1, 1, 1, 2, 2, 2, 0, 0]])
  seen = set()
  rng = np.random.default_rng(2)
  for _ in range(200):
    out = pose_positions(positions, segments, 32, rng)[0]
    assert out[0] == 0 and out[4] == 0 and list(out[7:]) == [0, 0]
    a, b = decompose(out[:4]), decompose(out[4:7])
    assert a[0] in (None, 1, 2) and b[0] in (None, 1, 2)
    assert out[3] <= 31 and out[6] <= 31
    seen.add((a[1], b[1]))
  assert len(seen) > 50  # independent skips per segment


def test_bad_inputs_are_named():
  with pytest.raises(ConfigError, match="PoSE target_length"):
    pose_positions(np.arange(8)[None], np.ones((1, 8)), 4, np.random.default_rng(0))
  with pytest.raises(DataError, match="consecutive positions"):
    pose_positions(np.array([[0, 2, 3]]), np.ones((1, 3)), 8, np.random.default_rng(0))


def test_the_trainer_applies_pose_when_configured(tmp_path, monkeypatch):
  """config.pose_target_length: every step's rows train at skipped positions beyond the
  row length, within the target; the hooks are resolved for the target length."""
  from rope_lab.training import loop as train  # pylint: disable=g-import-not-at-top
  from tests import train_helpers as th  # pylint: disable=g-import-not-at-top
  seen = []
  real = train.pose_positions

  def recording(*args):
    seen.append(real(*args))
    return seen[-1]

  monkeypatch.setattr(train, "pose_positions", recording)
  exp = th.tiny_experiment(steps=3, pose_target_length=64)  # rows of 16 tokens
  result = train.run(exp, str(tmp_path / "run"))
  assert (result.status, result.step) == ("completed", 3) and len(seen) == 3
  assert max(int(p.max()) for p in seen) >= 16 and all(int(p.max()) <= 63 for p in seen)
  assert all(np.isfinite(r["loss"]) for r in th.read_metrics(str(tmp_path / "run")))


def test_pose_configs_that_cannot_work_are_refused(tmp_path):
  from rope_lab.training import loop as train  # pylint: disable=g-import-not-at-top
  from tests import train_helpers as th  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="config.pose_target_length must be 0 \\(off\\) or >= seq_len=16"):
    th.tiny_experiment(pose_target_length=8)
  from rope_lab import config as config_lib  # pylint: disable=g-import-not-at-top
  from tests import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config.get_config("pe=learned")
  config.pe.max_length = 32
  config.update(steps=1, pose_target_length=64)
  with pytest.raises(ConfigError, match="seq_len 64 reads table row 63 but max_length is 32"):
    train.run(config_lib.experiment_from_config_dict(config), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
