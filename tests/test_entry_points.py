"""Every entry point run as a newcomer types it: relative paths from another directory,
a quiet terminal, full logs in <workdir>/log.txt, one exit convention."""

import json
import os
import subprocess

import pytest

from tests import train_helpers as th

TINY = os.path.join(th.REPO_ROOT, "tests", "tiny_config.py")


def run(args, cwd, timeout=300):
  return subprocess.run([th.PYTHON, "-m", *args], cwd=cwd, env=th.subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def test_train_finetune_and_evaluate_with_relative_paths_and_a_quiet_terminal(tmp_path):
  trained = run(["experiments.train", f"--config={TINY}", "--workdir=runs/tiny",
                 "--config.checkpoint_every=3"], tmp_path)
  assert trained.returncode == 0, trained.stderr[-3000:]
  workdir = tmp_path / "runs" / "tiny"
  assert th.checkpoint_steps(str(workdir)) == [3, 6]
  # Quiet: the run's own lines only; orbax's INFO lines are in log.txt.
  terminal = trained.stdout + trained.stderr
  assert "orbax" not in terminal.lower() and "INFO" not in terminal
  assert f"completed at step 6: {workdir}" in trained.stdout
  log = (workdir / "log.txt").read_text()
  assert "orbax" in log.lower() and "--workdir=runs/tiny" in log

  # --verbosity brings the libraries' messages back to the terminal.
  finetuned = run(["experiments.train", f"--config={TINY}", "--workdir=runs/ft", "--verbosity=0",
                   "--config.init_from=runs/tiny", "--config.steps=2", "--config.seq_len=32"], tmp_path)
  assert finetuned.returncode == 0, finetuned.stderr[-3000:]
  assert "orbax" in finetuned.stderr.lower()
  assert "parameters from" in finetuned.stderr and th.checkpoint_steps(str(tmp_path / "runs" / "ft")) == [2]
  with open(tmp_path / "runs" / "ft" / "config.json") as f:
    assert json.load(f)["train"]["init_from"] == str(workdir)  # recorded absolute

  evaluate = ["experiments.evaluate", "--workdir=runs/tiny", "--lengths=16,32", "--max_docs=1",
              "--doc_tokens=64"]
  first = run(evaluate, tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  results = workdir / "eval" / "results.jsonl"
  assert len(results.read_text().splitlines()) == 2 and "2 new rows" in first.stdout
  # Re-running the same evaluation measures and appends nothing.
  again = run(evaluate, tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert len(results.read_text().splitlines()) == 2 and "0 new rows" in again.stdout
  assert "Given directory is read only" not in again.stderr


def test_study_with_a_relative_workdir(tmp_path):
  config = os.path.join(th.REPO_ROOT, "tests", "tiny_study_config.py")
  completed = run(["experiments.study", f"--config={config}", "--workdir=runs/study"], tmp_path)
  assert completed.returncode == 0, completed.stderr[-3000:]
  workdir = tmp_path / "runs" / "study"
  assert f"report: {workdir / 'report.md'}" in completed.stdout
  assert th.checkpoint_steps(str(workdir / "runs" / "base_s0")) == [2, 4]
  assert (workdir / "log.txt").exists() and (workdir / "results.jsonl").exists()


def test_prepare_data_and_pe_figure_with_relative_paths(tmp_path):
  prepared = run(["experiments.prepare_data", "--dataset=kjv", "--data_dir=data"], tmp_path)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  assert os.path.isdir(tmp_path / "data" / "kjv")
  drawn = run(["experiments.pe_figure", "--out=figures/pe.png", "--train_length=16",
               "--max_distance=64", "--head_dim=16"], tmp_path)
  assert drawn.returncode == 0, drawn.stderr[-3000:]
  assert (tmp_path / "figures" / "pe.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["experiments.evaluate", "--workdir=runs/none", "--lengths=16"],
     "error: '{cwd}/runs/none' is not a training run directory: no config.json"),
    (["experiments.pe_figure", "--method={bad"], "config error: --method='{{bad' is not valid JSON"),
])
def test_errors_exit_2_with_one_line_and_no_traceback(tmp_path, args, message):
  completed = run(args, tmp_path)
  assert completed.returncode == 2
  assert message.format(cwd=tmp_path) in completed.stderr
  assert "Traceback" not in completed.stderr
  assert not (tmp_path / "runs" / "none").exists()  # nothing created for a wrong path

