"""Context parallelism: rows split over a sequence mesh axis give one device's numbers."""

import json
import subprocess

import numpy as np

from rope_lab.model import context_parallel

from rope_lab.training import loop as train
from tests import train_helpers as th


def test_front_and_back_chunks_give_every_device_equal_causal_work():
  for n in (2, 4, 8):
    chunks = context_parallel.balanced_chunks(n)
    assert sorted(c for pair in chunks for c in pair) == list(range(2 * n))
    assert len({context_parallel.causal_work(pair, 16) for pair in chunks}) == 1
  # By hand, chunks of 16 tokens: chunk c holds queries 16c+1 .. 16c+16 allowed keys, so
  # chunk 0 has 16*17/2 = 136 pairs and chunk 3 has 48*16 + 136 = 904; with n = 2 each
  # device does 1040, half of the row's 64*65/2 = 2080. Contiguous quarters would give the
  # last device 904 pairs against the first's 136.
  assert context_parallel.causal_work((0,), 16) == 136
  assert context_parallel.causal_work((3,), 16) == 904
  assert context_parallel.causal_work((0, 3), 16) == context_parallel.causal_work((1, 2), 16) == 1040


def test_data2_sequence4_mesh_matches_one_device_for_rope_yarn_xpos_alibi_and_kernels_run_per_shard():
  env = th.subprocess_env()
  result = subprocess.run([th.PYTHON, "-m", "tests.context_parallel_worker"], cwd=th.REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  *rows, error, fused = [json.loads(line) for line in result.stdout.strip().splitlines()]
  assert [r["encoding"] for r in rows] == ["rope", "yarn", "xpos", "alibi"]
  for r in rows:
    assert r["loss_diff"] <= 1e-5 * r["loss"], r
    assert r["grad_diff"] <= 1e-5 * max(r["grad_scale"], 1e-3), r
    assert r["grad_scale"] > 0, r
  assert "needs row lengths divisible by 8" in error["error"] and "length 30" in error["error"]
  # The Pallas kernels and the CPU kernel also run per shard (shard_map over batch and tensor axes).
  assert set(fused["fused_on_mesh"]) == {"pallas_gpu", "splash", "cpu_flash"}
  assert max(fused["fused_on_mesh"].values()) < 1e-5, fused


def test_two_processes_splitting_rows_over_a_sequence_axis_match_one_process(tmp_path):
  workdir = str(tmp_path / "two")
  steps = 3
  th.train_in_two_processes(workdir, f"--config.steps={steps}", "--config.mesh_shape=(1, 1, 1, 2)")
  single = str(tmp_path / "one")
  train.run(th.tiny_experiment(steps=steps), single)
  two_losses = [r["loss"] for r in th.read_metrics(workdir)]
  one_losses = [r["loss"] for r in th.read_metrics(single)]
  assert len(two_losses) == steps
  np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
  assert one_losses[0] != one_losses[-1]
