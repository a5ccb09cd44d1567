"""A study whose training run was stopped by SIGTERM stops too, and records nothing for it."""

import os

import pytest

from rope_lab import study

from rope_lab.running import cli

from rope_lab.training import loop as train
from rope_lab import results as results_lib
from tests.test_study import miniature


def test_a_preempted_training_run_stops_the_study_without_recording_it(tmp_path, monkeypatch):
  calls = []

  def preempted_run(exp, workdir, **kwargs):
    calls.append(workdir)  # what train.run returns after saving at a SIGTERM
    return train.TrainResult(step=2, status="preempted", train_loss=1.0, eval_loss=None)

  monkeypatch.setattr(train, "run", preempted_run)
  workdir = str(tmp_path / "study")
  runner = study.Study(miniature(), workdir, log=lambda message: None)
  with pytest.raises(cli.Terminated):  # the entry point turns it into exit status 143
    runner.train(study.base_run(runner.cfg, 0))
  assert calls == [os.path.join(workdir, "runs", "base_s0")]
  # Nothing recorded: running the study again trains this run on from its checkpoint.
  assert not results_lib.select(results_lib.read_rows(os.path.join(workdir, "results.jsonl")), kind="train")
