"""The study's training runs as sweeps: the same runs the study trains, and a study that
finds them trained only evaluates."""

import os
import shutil

import pytest

from configs import study as study_configs
from rope_lab import results as results_lib
from rope_lab import study
from rope_lab.training import loop as train
from rope_lab.sweep import runs as runs_lib
from tests import tiny_study_config
from tests.test_sweep import parse_run_command




def study_runs(cfg: study.StudyConfig, runs_dir: str) -> dict:
  """Every run the study can train (all candidate learning rates), by name: the study's side."""
  specs = [study.base_run(cfg, seed) for seed in cfg.seeds] + study.extra_runs(cfg)
  specs += study.finetune_runs(cfg, cfg.finetune_learning_rates, runs_dir)
  return {spec.name: spec.exp for spec in specs}


def swept_runs(config_path: str, arg: str, runs_dir: str) -> dict:
  """The runs of sweep=base and sweep=finetune as experiments.train would build them."""
  runs = []
  for which in ("base", "finetune"):
    spec = f"{config_path}:{arg},sweep={which}" if arg else f"{config_path}:sweep={which}"
    runs += runs_lib.expand(spec, runs_dir)
  parsed = {}
  for run in runs:
    exp, workdir = parse_run_command(run.argv())
    assert workdir == os.path.join(runs_dir, run.name)
    parsed[run.name] = exp
  return parsed


@pytest.mark.parametrize("arg", ["", "quick"])
def test_shipped_study_sweeps_are_exactly_the_study_runs(arg, tmp_path):
  runs_dir = str(tmp_path / "study" / "runs")
  cfg = study.study_config_from_config_dict(study_configs.get_config(arg or None))
  expected = study_runs(cfg, runs_dir)
  swept = swept_runs("configs/study.py", arg, runs_dir)
  assert list(swept) == list(expected)  # same names, same order
  for name, exp in expected.items():
    assert swept[name] == exp, name
  # What the study trains for the chosen rate is among them (names readable and stable).
  assert "base_s0" in swept and f"ft_pi4_lr{cfg.finetune_learning_rates[0]:g}_s0" in swept
  assert runs_lib.expand(f"configs/study.py:{arg},sweep=finetune" if arg else
                         "configs/study.py:sweep=finetune", runs_dir)[0].entry_point == "experiments.train"


def test_a_bad_study_run_argument_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="argument 'run' must be one of"):
    study_configs.get_config("run=giraffe")
  with pytest.raises(ValueError, match="run=finetune needs method=<a label of finetunes"):
    study_configs.get_config("run=finetune,method=alibi,scale=4,lr=0.001")
  with pytest.raises(ValueError, match=r"run=variant needs method=<a label of pretrain_variants \['icp_in_context', 'icp_random', 'nope4', 'xpos'\]"):
    study_configs.get_config("run=variant,method=alibi")
  with pytest.raises(runs_lib.ConfigError, match="sweeps: base, finetune, seeds"):
    runs_lib.expand("configs/study.py:sweep=grid", str(tmp_path))


def test_a_study_whose_runs_a_sweep_trained_only_evaluates(tmp_path):
  # The sweep trains elsewhere (a bucket, say); its runs are then copied under the study.
  bucket_runs = str(tmp_path / "bucket" / "runs")
  swept = swept_runs("tests/tiny_study_config.py", "", bucket_runs)
  assert list(swept) == ["base_s0", "ft_pi2_lr0.01_s0", "ft_yarn2_lr0.01_s0"]
  assert swept["ft_pi2_lr0.01_s0"].train.init_from == os.path.join(bucket_runs, "base_s0")
  for name, exp in swept.items():  # the sweep's runs, in process (the launcher runs these commands)
    assert train.run(exp, os.path.join(bucket_runs, name)).status == "completed"
  workdir = str(tmp_path / "study")
  shutil.copytree(bucket_runs, os.path.join(workdir, "runs"))
  cfg = study.study_config_from_config_dict(tiny_study_config.get_config())
  messages = []
  study.run_study(cfg, workdir, log=messages.append)
  assert not [m for m in messages if m.startswith("training ")], messages
  assert sum("already trained" in m for m in messages) == 3
  rows = results_lib.select(results_lib.read_rows(os.path.join(workdir, "results.jsonl")), kind="train")
  assert sorted(r["run"] for r in rows) == sorted(swept)
  assert all(r["metrics"]["steps"] == swept[r["run"]].train.steps and r["metrics"]["train_loss"] > 0
             for r in rows)
  assert results_lib.select(results_lib.read_rows(os.path.join(workdir, "results.jsonl")),
                            kind="perplexity", run="ft_yarn2_lr0.01_s0")
