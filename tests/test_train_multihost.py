"""Two processes on this machine (CPU, gloo collectives) train like one process."""

import os
import socket
import subprocess

import numpy as np

from rope_lab import train
from tests import train_helpers as th

STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
  port = _free_port()
  workdir = str(tmp_path / "two")
  processes = [
      subprocess.Popen(
          [th.PYTHON, "-m", "experiments.train", "--config=tests/tiny_config.py",
           f"--workdir={workdir}", f"--config.steps={STEPS}",
           f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--process_id={index}"],
          cwd=th.REPO_ROOT, env=th.subprocess_env(), stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True)
      for index in range(2)]
  try:
    outputs = [p.communicate(timeout=240) for p in processes]
  finally:
    for p in processes:  # a process whose peer died would otherwise wait for it
      if p.poll() is None:
        p.kill()
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-3000:]

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
