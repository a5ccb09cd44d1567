"""Two processes on this machine (CPU, gloo collectives) train like one process."""

import os

import numpy as np

from rope_lab.training import loop as train
from tests import train_helpers as th

STEPS = 4


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
  workdir = str(tmp_path / "two")
  th.train_in_two_processes(workdir, f"--config.steps={STEPS}")

  single = str(tmp_path / "one")  # one process with the whole batch
  train.run(th.tiny_experiment(steps=STEPS), single)
  two_losses = [r["loss"] for r in th.read_metrics(workdir)]
  one_losses = [r["loss"] for r in th.read_metrics(single)]
  assert len(two_losses) == STEPS
  np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
  # Both processes wrote their own data-iterator state into the one committed step.
  data_dir = os.path.join(workdir, "checkpoints", str(STEPS), "data")
  assert sorted(f for f in os.listdir(data_dir) if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
