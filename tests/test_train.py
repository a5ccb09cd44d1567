"""The training loop end to end at test size: resume, preemption, failures, fine-tuning."""

import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from orbax.checkpoint import utils as ocp_utils

from rope_lab import config as config_lib
from rope_lab.training import loop as train
from tests import train_helpers as th



def test_exact_resume_after_preemption_gives_bit_identical_parameters(tmp_path):
  exp = th.tiny_experiment(steps=6, async_checkpointing=True)
  straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
  assert train.run(exp, straight).step == 6

  # A SIGTERM while step 3's batch is read: step 3 completes, is saved, the run returns.
  first = train.run(exp, interrupted, data_source=th.wrapped_source(exp, th.sigterm_on_batch(3)))
  assert (first.status, first.step) == ("preempted", 3)
  assert th.checkpoint_steps(interrupted) == [3]
  second = train.run(exp, interrupted)
  assert (second.status, second.step) == ("completed", 6)

  a, b = th.saved_params(straight, 6), th.saved_params(interrupted, 6)
  assert a.keys() == b.keys() and len(a) > 5
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  losses = lambda d: [(r["step"], r["loss"]) for r in th.read_metrics(d)]
  assert losses(straight) == losses(interrupted)  # steps 1-3, then 4-6 from the resumed run


def test_non_finite_loss_stops_without_saving_and_keeps_last_good_checkpoint(tmp_path):
  exp = th.tiny_experiment(steps=6, checkpoint_every=1)
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteLossError, match=r"step 3.*Last good checkpoint: step 2"):
    train.run(exp, workdir, data_source=th.wrapped_source(exp, th.nan_on_batch(3)))
  assert th.checkpoint_steps(workdir) == [1, 2]
  assert all(np.isfinite(v).all() for v in th.saved_params(workdir, 2).values())
  assert [r["step"] for r in th.read_metrics(workdir)] == [1, 2]


def test_half_written_checkpoint_is_ignored(tmp_path):
  exp, workdir = th.tiny_experiment(steps=6), str(tmp_path / "run")
  train.run(exp, workdir, data_source=th.wrapped_source(exp, th.sigterm_on_batch(2)))
  # What a writer killed mid-save leaves: the step's files under orbax's temporary name.
  checkpoints = os.path.join(workdir, "checkpoints")
  partial = os.path.join(checkpoints, f"4{ocp_utils.TMP_DIR_SUFFIX}")
  shutil.copytree(os.path.join(checkpoints, "2"), partial)
  os.remove(os.path.join(partial, "commit_success.txt"))

  result = train.run(exp, workdir)
  assert result.step == 6
  assert [r["step"] for r in th.read_metrics(workdir)] == [1, 2, 3, 4, 5, 6]  # resumed from 2
  assert th.checkpoint_steps(workdir) == [2, 6] and not os.path.exists(partial)


def test_finetune_starts_from_another_runs_parameters_with_new_encoding_and_length(tmp_path):
  source, target = str(tmp_path / "source"), str(tmp_path / "finetune")
  train.run(th.tiny_experiment(steps=6), source)
  config = th.tiny_config.get_config()
  config.pe = config_lib.pe_config_dict("yarn", factor=2.0, original_max_position_embeddings=16)
  config.update(seq_len=32, steps=1, init_from=source, lr_schedule="constant",
                learning_rate=1e-9, warmup_steps=0, weight_decay=0.0)
  exp = config_lib.experiment_from_config_dict(config)
  result = train.run(exp, target)
  assert result.step == 1 and np.isfinite(result.train_loss)

  before, after = th.saved_params(source, 6), th.saved_params(target, 1)
  for key in before:  # a learning rate of 1e-9 moves nothing visibly: params came from source
    np.testing.assert_allclose(after[key], before[key], atol=1e-6, err_msg=key)
  resolved = config_lib.experiment_to_dict(exp)
  with open(os.path.join(target, "config.json")) as f:
    saved = json.load(f)
  assert saved["pe"]["name"] == "yarn" and saved["train"]["seq_len"] == 32 == resolved["train"]["seq_len"]


def test_finetune_from_a_directory_without_checkpoints_names_init_from(tmp_path):
  exp = th.tiny_experiment(init_from=str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="init_from"):
    train.run(exp, str(tmp_path / "run"))


def test_loss_falls_on_the_tiny_cpu_config_through_the_command_line(tmp_path):
  # The documented command, shortened: 30 steps of 32-byte rows on the KJV corpus.
  data_dir, workdir = tmp_path / "data", str(tmp_path / "run")
  data_dir.mkdir()
  completed = subprocess.run(
      [th.PYTHON, "-m", "experiments.train", "--config=configs/tiny_cpu.py",
       f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.steps=30",
       "--config.seq_len=32", "--config.warmup_steps=5", "--config.eval_every=30",
       "--config.eval_batches=1", "--config.checkpoint_every=0"],
      cwd=th.REPO_ROOT, env=th.subprocess_env(), capture_output=True, text=True, timeout=300)
  assert completed.returncode == 0, completed.stderr[-3000:]
  losses = [r["loss"] for r in th.read_metrics(workdir)]
  assert len(losses) == 30 and losses[0] > 5.0  # about ln(258) at initialisation
  assert np.mean(losses[-5:]) < losses[0] - 2.0, losses
  (evaluation,) = th.read_metrics(workdir, "eval")
  assert evaluation["loss"] < losses[0] - 2.0
  assert "step 30/30" in completed.stderr  # the progress lines
  for name in ("config.json", "tokenizer_spec.json", "tensorboard", "checkpoints/30"):
    assert os.path.exists(os.path.join(workdir, name)), name


def test_sigterm_saves_at_the_step_it_stopped_and_resume_continues(tmp_path):
  workdir = str(tmp_path / "run")
  command = [th.PYTHON, "-m", "experiments.train", "--config=tests/tiny_config.py",
             f"--workdir={workdir}", "--config.steps=5000"]
  process = subprocess.Popen(command, cwd=th.REPO_ROOT, env=th.subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  try:
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
      if os.path.exists(metrics) and len(th.read_metrics(workdir)) >= 3:
        break
      time.sleep(0.1)
    process.terminate()  # SIGTERM
    _, stderr = process.communicate(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 143, stderr[-3000:]
  (line,) = [l for l in stderr.splitlines() if "SIGTERM: stopped at step" in l]
  stopped = int(line.split("step")[-1].split()[0])
  assert 3 <= stopped < 5000
  assert th.checkpoint_steps(workdir) == [stopped]

  result = train.run(th.tiny_experiment(steps=stopped + 2), workdir)
  assert (result.status, result.step) == ("completed", stopped + 2)
  assert [r["step"] for r in th.read_metrics(workdir)][-2:] == [stopped + 1, stopped + 2]
