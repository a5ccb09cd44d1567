"""Sweeps: expansion, names, commands for each launcher, and local runs that resume."""

import dataclasses
import os
import shlex
import subprocess
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags

from rope_lab import config as config_lib
from rope_lab import results as results_lib
from rope_lab.training import loop as train
from rope_lab.sweep import local, remote, runs as runs_lib, summary
from tests import train_helpers as th


TINY = os.path.join(th.REPO_ROOT, "tests", "tiny_config.py")


def config_file(tmp_path, body: str, name: str = "sweep_config.py") -> str:
  """A config file delegating to tests/tiny_config.py, with the given get_sweep."""
  path = tmp_path / name
  path.write_text("from configs import common\nfrom tests import tiny_config\n\n"
                  "def get_config(arg=None):\n  return tiny_config.get_config(arg)\n\n"
                  + textwrap.dedent(body))
  return str(path)


def parse_run_command(argv):
  """What experiments/train.py's flags make of a run's command (locked, as there)."""
  assert argv[1:3] == ["-m", "experiments.train"]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                           lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  cwd = os.getcwd()
  os.chdir(th.REPO_ROOT)
  try:
    values(["train", *argv[3:]])
  finally:
    os.chdir(cwd)
  return config_lib.experiment_from_config_dict(holder.value), values.workdir


# ----------------------------------------------------------------------------- expansion


def test_expansion_is_deterministic_with_stable_names_and_directories(tmp_path):
  runs = runs_lib.expand("tests/tiny_config.py", "/sweeps/a")
  assert runs == runs_lib.expand("tests/tiny_config.py", "/sweeps/a")
  # product(pe, seed): the last axis varies fastest; names come from the values only.
  assert [r.name for r in runs] == ["pe-rope_seed-0", "pe-rope_seed-1", "pe-alibi_seed-0",
                                    "pe-alibi_seed-1"]
  assert [r.workdir for r in runs] == [f"/sweeps/a/{r.name}" for r in runs]
  assert runs[2].argv() == ["python", "-m", "experiments.train",
                            "--config=tests/tiny_config.py:pe=alibi", "--config.seed=0",
                            "--workdir=/sweeps/a/pe-alibi_seed-0"]
  # Adding a point renames nobody: the names depend on each point alone.
  path = config_file(tmp_path, """
      def get_sweep(arg=None):
        return common.product(common.sweep("pe", ["rope", "nope", "alibi"]),
                              common.sweep("config.seed", [0, 1]))
      """)
  grown = {r.name for r in runs_lib.expand(path, "/sweeps/a")}
  assert {r.name for r in runs} < grown
  assert runs_lib.join_path("gs://b/s", "seed-1") == "gs://b/s/seed-1"


def test_every_run_command_parses_back_to_the_point_it_came_from():
  runs = runs_lib.expand("configs/tiny_cpu.py:finetune,sweep=finetune", "/sweeps/ft",
                         fixed={"config.init_from": "/runs/base"})
  assert len(runs) == 8
  for run in runs:
    exp, workdir = parse_run_command(run.argv())
    point = run.values
    assert workdir == run.workdir and exp.train.init_from == "/runs/base"
    assert exp.encoding.name == point["pe"] and exp.train.seq_len == point["seq"]
    assert exp.encoding.factor == point["seq"] / 128  # s = new length / pretraining length
    assert exp.train.learning_rate == point["config.learning_rate"]


@pytest.mark.parametrize("spec, count", [
    ("configs/tiny_cpu.py", 1), ("configs/tiny_cpu.py:smoke,sweep=seeds", 3),
    ("configs/tiny_cpu.py:finetune,sweep=finetune", 8),
    ("configs/tiny_cpu.py:finetune,sweep=encodings", 16),
    ("configs/tiny_cpu.py:finetune,sweep=giraffe", 3), ("configs/study.py:sweep=seeds", 3),
    ("configs/tpu_pod.py:finetune_8k", 1),
])
def test_shipped_sweeps_expand_into_valid_runs(spec, count):
  runs = runs_lib.expand(spec, "/sweeps/x")  # every point through the config boundary
  assert len(runs) == count and len({r.name for r in runs}) == count


def test_a_fine_tune_sweep_without_finetune_is_a_clear_error():
  with pytest.raises(runs_lib.ConfigError, match="add finetune to the argument"):
    runs_lib.expand("configs/tiny_cpu.py:sweep=encodings", "/sweeps/x")


def test_zipped_and_tuple_valued_points():
  from configs import common  # pylint: disable=g-import-not-at-top
  points = common.zipped(common.sweep("a", [1, 2]), common.sweep("config.b", ["x", "y"]))
  assert points == [{"a": 1, "config.b": "x"}, {"a": 2, "config.b": "y"}]
  with pytest.raises(ValueError, match="equal lengths"):
    common.zipped(common.sweep("a", [1, 2]), common.sweep("b", [1]))
  with pytest.raises(ValueError, match=r"sets \['a'\] twice"):
    common.product(common.sweep("a", [1]), common.sweep("a", [2]))
  # The study's seeds as runs: a tuple override that the study's flags parse back.
  runs = runs_lib.expand("configs/study.py:quick,sweep=seeds", "/s")
  assert [r.name for r in runs] == ["seeds-0"]
  assert runs[0].argv()[:4] == ["python", "-m", "experiments.study",
                                "--config=configs/study.py:quick,sweep=seeds"]
  assert runs[0].overrides == ("--config.seeds=(0,)",)


@pytest.mark.parametrize("sweep, message", [
    ('common.sweep("config.seedz", [1])', r"unknown sweep field 'config.seedz'; fields there: .*seed"),
    ('common.sweep("config.model.widht", [1])', r"unknown sweep field 'config.model.widht'"),
    ('common.sweep("config.steps", [4, 0])',
     r"sweep point \{'config.steps': 0\}: config.steps must be an int >= 1, got 0"),
    ('common.sweep("config.steps", ["many"])', r"sweep value config.steps='many' rejected"),
    ('common.sweep("pe", ["rotary"])', r"sweep point \{'pe': 'rotary'\}: config.pe.name must be one of"),
    ('common.sweep("size", [1])', r"unknown argument 'size'"),
    ('common.sweep("config.learning_rate", [0.1, 0.1])', r"map to one directory 'learning_rate-0.1'"),
    ('common.sweep("config.data.dataset", ["random:a/b", "random:a_b"])', r"map to one directory"),
])
def test_bad_sweeps_are_errors_before_anything_runs(tmp_path, sweep, message):
  path = config_file(tmp_path, f"def get_sweep(arg=None):\n  return {sweep}\n")
  with pytest.raises(runs_lib.ConfigError, match=message):
    runs_lib.expand(path, str(tmp_path / "sweep"))
  assert not (tmp_path / "sweep").exists()


# ----------------------------------------------------------------------------- remote launchers

XPK = remote.XpkTarget(cluster="lab", docker_image="gcr.io/proj/rope_lab:1", tpu_type="v5litepod-16",
                       num_slices=2, project="proj", zone="us-west4-a")
TPU_VM = remote.TpuVmTarget(tpu_name="pod", zone="us-central2-b", project="proj")


def test_xpk_dry_run_commands():
  runs = runs_lib.expand("tests/tiny_config.py", "gs://bucket/sweep")
  commands = remote.xpk_commands(runs[:2], XPK)
  assert commands == [
      ["xpk", "workload", "create", "--cluster=lab", "--project=proj", "--zone=us-west4-a",
       f"--workload={remote.workload_name('ropelab', runs[0])}", "--tpu-type=v5litepod-16",
       "--num-slices=2", "--docker-image=gcr.io/proj/rope_lab:1",
       "--command=python3 -m experiments.train --config=tests/tiny_config.py:pe=rope "
       "--config.seed=0 --workdir=gs://bucket/sweep/pe-rope_seed-0"],
      ["xpk", "workload", "create", "--cluster=lab", "--project=proj", "--zone=us-west4-a",
       f"--workload={remote.workload_name('ropelab', runs[1])}", "--tpu-type=v5litepod-16",
       "--num-slices=2", "--docker-image=gcr.io/proj/rope_lab:1",
       "--command=python3 -m experiments.train --config=tests/tiny_config.py:pe=rope "
       "--config.seed=1 --workdir=gs://bucket/sweep/pe-rope_seed-1"]]
  gpu = remote.XpkTarget(cluster="lab", docker_image="img", device_type="h100-80gb-8", num_nodes=4)
  assert remote.xpk_commands(runs[:1], gpu)[0][3:7] == [
      "--cluster=lab", f"--workload={remote.workload_name('ropelab', runs[0])}",
      "--device-type=h100-80gb-8", "--num-nodes=4"]


def test_xpk_workload_names_are_valid_stable_and_distinct():
  runs = runs_lib.expand("configs/tiny_cpu.py:finetune,sweep=finetune", "gs://b/s")
  names = [remote.workload_name("ropelab", run) for run in runs]
  assert len(set(names)) == len(names)
  assert all(len(n) <= 39 and n[0].isalpha() and set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
             for n in names)
  assert names == [remote.workload_name("ropelab", run) for run in runs]


def test_gcloud_tpu_dry_run_commands():
  runs = runs_lib.expand("tests/tiny_config.py", "gs://bucket/sweep")
  assert remote.gcloud_tpu_commands(runs[2:3], TPU_VM) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-central2-b",
      "--project=proj", "--worker=all",
      "--command=cd rope_lab && python3 -m experiments.train "
      "--config=tests/tiny_config.py:pe=alibi --config.seed=0 "
      "--workdir=gs://bucket/sweep/pe-alibi_seed-0"]]


def test_remote_launchers_need_a_bucket_and_their_tool(tmp_path, monkeypatch):
  runs = runs_lib.expand("tests/tiny_config.py", str(tmp_path))
  with pytest.raises(remote.LauncherError, match="needs a bucket directory"):
    remote.xpk_commands(runs, XPK)
  with pytest.raises(remote.LauncherError, match="needs --cluster"):
    remote.XpkTarget(cluster="", docker_image="img", tpu_type="v4-8")
  with pytest.raises(remote.LauncherError, match="exactly one of --tpu_type"):
    remote.XpkTarget(cluster="c", docker_image="img")
  monkeypatch.setenv("PATH", str(tmp_path))  # neither xpk nor gcloud here
  commands = remote.gcloud_tpu_commands(runs_lib.expand("tests/tiny_config.py", "gs://b/s"), TPU_VM)
  with pytest.raises(remote.LauncherError, match="needs 'gcloud' on PATH"):
    remote.submit(commands, "gcloud_tpu", execute=True)
  commands = remote.xpk_commands(runs_lib.expand("tests/tiny_config.py", "gs://b/s"), XPK)
  with pytest.raises(remote.LauncherError, match="needs 'xpk' on PATH"):
    remote.submit(commands, "xpk", execute=True)


def fake_tool(directory, name: str) -> str:
  """An executable that records each call's arguments (one per line, calls separated)."""
  record = directory / f"{name}_calls.txt"
  script = directory / name
  script.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a" >> "{record}"; done\n'
                    f'echo "--end--" >> "{record}"\n')
  script.chmod(0o755)
  return str(record)


def recorded_calls(record: str) -> list[list[str]]:
  calls, current = [], []
  with open(record) as f:
    for line in f.read().splitlines():
      if line == "--end--":
        calls.append(current)
        current = []
      else:
        current.append(line)
  return calls


def test_execute_calls_gcloud_with_exactly_the_dry_run_arguments(tmp_path, monkeypatch):
  record = fake_tool(tmp_path, "gcloud")
  monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
  commands = remote.gcloud_tpu_commands(runs_lib.expand("tests/tiny_config.py", "gs://b/s"), TPU_VM)
  remote.submit(commands, "gcloud_tpu", execute=True, log=lambda _: None)
  assert recorded_calls(record) == [command[1:] for command in commands]


def test_sweep_entry_point_executes_xpk_with_exactly_the_dry_run_commands(tmp_path):
  # The dry run's lines, in process; the entry point with --execute, in one subprocess.
  target = remote.XpkTarget(cluster="lab", docker_image="img", tpu_type="v5litepod-16",
                            num_slices=2, zone="us-west4-a")
  expected = remote.xpk_commands(runs_lib.expand("tests/tiny_config.py", "gs://b/s"), target)
  printed = []
  remote.submit(expected, "xpk", execute=False, log=printed.append)  # the default: print only
  assert [shlex.split(line) for line in printed] == expected and len(expected) == 4
  record = fake_tool(tmp_path, "xpk")
  flags_ = ["-m", "experiments.sweep", "--config=tests/tiny_config.py", "--workdir=gs://b/s",
            "--launcher=xpk", "--cluster=lab", "--tpu_type=v5litepod-16", "--num_slices=2",
            "--docker_image=img", "--zone=us-west4-a", "--execute"]
  env = th.subprocess_env(PATH=str(tmp_path) + os.pathsep + os.environ["PATH"])
  subprocess.run([th.PYTHON, *flags_], cwd=th.REPO_ROOT, env=env, capture_output=True,
                 text=True, timeout=240, check=True)
  assert recorded_calls(record) == [command[1:] for command in expected]


# ----------------------------------------------------------------------------- local launcher
# One module-scoped set of local sweeps, shared by the tests below (each subprocess costs
# seconds of CPU): seed-1 is interrupted after its checkpoint at step 2; seed-0 runs as two
# JAX processes; then one call resumes seed-1 beside a run that fails and a zero-shot
# evaluation of seed-0's checkpoint (configs/evaluate.py); a last call starts nothing.

TWO_SEEDS = """
    def get_sweep(arg=None):
      return common.sweep("config.seed", [0, 1])
    """
FAILING = """
    def get_sweep(arg=None):
      return common.sweep("config.data.dataset", ["kjv-missing"])
    """
EVALUATION = """
    from configs import evaluate

    ENTRY_POINT = evaluate.ENTRY_POINT

    def get_config(arg=None):
      config = evaluate.get_config(arg)
      config.update(lengths=(16, 32), doc_tokens=64)
      return config

    def get_sweep(arg=None):
      return common.product(common.sweep("pe", ["yarn"]), common.sweep("factor", [2.0]))
    """
YARN_2 = '{"name": "yarn", "factor": 2, "original_max_position_embeddings": 16}'


def _with(exp, **train_fields):
  return dataclasses.replace(exp, train=dataclasses.replace(exp.train, **train_fields))


@dataclasses.dataclass
class LocalSweeps:
  sweep_dir: str
  runs: list  # the two seeds
  failing: list
  evaluation: list
  first: tuple  # (rows, failed, lines) of each call
  second: tuple
  third: tuple


@pytest.fixture(scope="module")
def local_sweeps(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("local_sweeps")
  sweep_dir = str(tmp_path / "sweep")
  runs = runs_lib.expand(config_file(tmp_path, TWO_SEEDS), sweep_dir,
                         fixed={"config.steps": 4, "config.checkpoint_every": 2})
  failing = runs_lib.expand(config_file(tmp_path, FAILING, "failing.py"), sweep_dir,
                            validate=False, fixed={"config.steps": 1})
  evaluation = runs_lib.expand(
      config_file(tmp_path, EVALUATION, "evaluation.py") + ":train_length=16", sweep_dir,
      fixed={"config.checkpoint": runs[0].workdir})
  exp, _ = parse_run_command(runs[1].argv(th.PYTHON))
  train.run(_with(exp, steps=2), runs[1].workdir)  # seed-1, interrupted after step 2

  def call(selected, **kwargs):
    lines = []
    rows, failed = local.run_local(selected, sweep_dir, python=th.PYTHON, env=th.subprocess_env(),
                                   cwd=th.REPO_ROOT, log=lines.append, **kwargs)
    return rows, failed, lines

  first = call(runs[:1], processes_per_run=2)
  second = call(runs + failing + evaluation, parallel=3)
  third = call(runs)
  return LocalSweeps(sweep_dir, runs, failing, evaluation, first, second, third)


def test_a_local_run_as_two_jax_processes(local_sweeps):
  rows, failed, _ = local_sweeps.first
  log = open(os.path.join(local_sweeps.sweep_dir, "logs", "seed-0.log")).read()
  assert not failed, log[-3000:]
  assert [r["key"] for r in rows] == ["seed-0"]
  assert rows[0]["metrics"]["steps"] == 4 and rows[0]["point"] == {"config.seed": 0}
  data_dir = os.path.join(local_sweeps.runs[0].workdir, "checkpoints", "4", "data")
  assert sorted(f for f in os.listdir(data_dir) if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


def test_local_sweep_skips_finished_runs_and_resumes_an_interrupted_one(local_sweeps, tmp_path):
  rows, _, lines = local_sweeps.second
  assert lines[0] == "[1/4] seed-0: finished earlier, skipped"
  assert lines[1] == "[2/4] seed-1: resuming"
  assert any(line.startswith("[2/4] seed-1: done in") for line in lines)
  assert [r["key"] for r in rows if r["key"].startswith("seed-")] == ["seed-0", "seed-1"]
  # Resumed, not restarted: steps 1-2 from the interrupted run, 3-4 from the sweep.
  assert [r["step"] for r in th.read_metrics(local_sweeps.runs[1].workdir)] == [1, 2, 3, 4]
  seed_rows = [r for r in rows if r["key"].startswith("seed-")]
  text = summary.table(seed_rows)
  assert "| run | config.seed | steps | train_loss | seconds |" in text and "| seed-1 | 1 | 4 |" in text
  assert summary.figure(seed_rows, str(tmp_path / "sweep.png")) and (tmp_path / "sweep.png").stat().st_size
  # Everything finished: a third call starts nothing.
  _, _, lines = local_sweeps.third
  assert len(lines) == 2 and all(line.endswith("finished earlier, skipped") for line in lines)


def test_a_failing_run_is_reported_and_the_others_still_run(local_sweeps):
  rows, failed, lines = local_sweeps.second
  assert failed == ["data.dataset-kjv-missing"]
  assert "data.dataset-kjv-missing" not in {r["key"] for r in rows}
  assert {"seed-1", "pe-yarn_factor-2.0"} <= {r["key"] for r in rows}  # ran beside it
  assert any("FAILED" in line and "logs" in line for line in lines)


def test_an_evaluation_sweep_gathers_its_rows_in_the_sweep_results(local_sweeps, tmp_path):
  """configs/evaluate.py through the sweep gives the JSON-flag form's numbers, in one file."""
  from rope_lab.evaluate import checkpoint_eval, plans  # pylint: disable=g-import-not-at-top
  (run,) = local_sweeps.evaluation
  assert run.argv()[1:3] == ["-m", "experiments.evaluate"] and run.name == "pe-yarn_factor-2.0"
  rows = results_lib.read_rows(os.path.join(local_sweeps.sweep_dir, "results.jsonl"))
  swept = {r["length"]: r["metrics"]["loss"] for r in rows if r["kind"] == "perplexity"}
  assert sorted(swept) == [16, 32]
  # The run's own rows come just before its row in the sweep's file.
  index = next(i for i, r in enumerate(rows) if r["kind"] == "sweep_run" and r["key"] == run.name)
  assert [r["kind"] for r in rows[index - 2:index]] == ["perplexity", "perplexity"]
  settings = checkpoint_eval.EvalSettings(lengths=(16, 32), max_docs=1, doc_tokens=64)
  own = checkpoint_eval.evaluate_checkpoint(local_sweeps.runs[0].workdir, [plans.plan_from_json(YARN_2)],
                                            settings, str(tmp_path / "results.jsonl"), log=lambda _: None)
  assert {r["plan"] for r in own} == {r["plan"] for r in rows if r["kind"] == "perplexity"}
  for row in own:
    assert swept[row["length"]] == pytest.approx(row["metrics"]["loss"], rel=1e-4)


def test_an_evaluation_sweep_without_a_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(runs_lib.ConfigError, match="config.checkpoint must be a trained run directory"):
    runs_lib.expand("configs/evaluate.py:sweep=zero_shot", str(tmp_path / "s"))
  runs = runs_lib.expand("configs/evaluate.py:sweep=zero_shot", "/s",
                         fixed={"config.checkpoint": "/runs/seed-{seed}"})
  assert len(runs) == 4 * 2 * 3 and runs[0].name == "pe-pi_factor-2.0_seed-0"
  assert "--config.checkpoint=/runs/seed-{seed}" in runs[0].argv()


@pytest.mark.parametrize("path", ["README.md", "configs/tiny_cpu.py", "configs/study.py",
                                  "configs/tpu_pod.py", "configs/evaluate.py"])
def test_documented_sweep_commands_expand(path):
  from tests.test_config import documented_commands  # pylint: disable=g-import-not-at-top
  commands = documented_commands(path, "experiments.sweep")
  assert commands
  for command in commands:
    values = dict(a[2:].split("=", 1) for a in command[3:] if a.startswith("--") and "=" in a)
    settings = [a.split("=", 1)[1] for a in command[3:] if a.startswith("--set=")]
    runs = runs_lib.expand(values["config"], values["workdir"],
                           fixed=runs_lib.parse_settings(settings))
    assert runs and all(r.workdir.startswith(values["workdir"]) for r in runs), command
