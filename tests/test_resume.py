"""Resuming a work directory: validated against the stored config before anything is written."""

import json
import os

import pytest

from rope_lab.training import resume

from rope_lab.training import loop as train
from rope_lab.errors import CheckpointError, WorkdirError
from rope_lab.evaluate import runs
from tests import train_helpers as th



def files_of(workdir):
  """Every file's bytes (checkpoints included): what must stay untouched by a refused run."""
  contents = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      if name != "log.txt":
        with open(os.path.join(root, name), "rb") as f:
          contents[os.path.relpath(os.path.join(root, name), workdir)] = f.read()
  return contents


@pytest.fixture
def trained(tmp_path):
  workdir = str(tmp_path / "run")
  assert train.run(th.tiny_experiment(steps=4), workdir).step == 4
  return workdir


def test_a_change_that_cannot_resume_is_refused_listing_the_fields_and_nothing_changes(trained):
  before = files_of(trained)
  wider = th.tiny_experiment(steps=6, model__d_model=64, data__tokenizer="byte", seed=3)
  with pytest.raises(WorkdirError) as refused:
    train.run(wider, trained)
  message = str(refused.value)
  assert "model.d_model: 32 -> 64" in message and "train.seed: 0 -> 3" in message
  assert "steps" not in message.split("These change")[0]  # steps may change; not listed
  assert "--config.init_from=" in message
  # An encoding with parameters of its own (a learned position table) cannot resume either.
  with pytest.raises(WorkdirError, match=r"pe.name: 'rope' -> 'learned'"):
    train.run(th.tiny_experiment(steps=6, pe="learned"), trained)
  assert files_of(trained) == before
  runs.load_run(trained)  # the stored config still describes the checkpoints


def test_steps_below_the_checkpoint_is_an_error_not_a_silent_success(trained):
  before = files_of(trained)
  with pytest.raises(WorkdirError, match=r"config.steps=2 is below the newest checkpoint .* \(step 4\)"):
    train.run(th.tiny_experiment(steps=2), trained)
  assert files_of(trained) == before


def test_allowed_changes_go_to_the_history_and_the_original_config_stays(trained):
  original = open(os.path.join(trained, "config.json")).read()
  result = train.run(th.tiny_experiment(steps=6, learning_rate=5e-3, log_every=2), trained)
  assert result.step == 6
  assert open(os.path.join(trained, "config.json")).read() == original
  with open(os.path.join(trained, resume.HISTORY_FILE)) as f:
    (entry,) = [json.loads(line) for line in f]
  assert entry["resumed_at_step"] == 4
  assert entry["changes"] == {"train.learning_rate": {"from": 1e-2, "to": 5e-3},
                              "train.log_every": {"from": 1, "to": 2},
                              "train.steps": {"from": 4, "to": 6}}
  current = runs.read_experiment(trained)
  assert (current.train.steps, current.train.learning_rate) == (6, 5e-3)
  # Resuming again with the same config is a no-op and adds no history entry.
  assert train.run(th.tiny_experiment(steps=6, learning_rate=5e-3, log_every=2), trained).step == 6
  assert len(open(os.path.join(trained, resume.HISTORY_FILE)).read().splitlines()) == 1


def test_a_run_that_fails_under_new_settings_records_nothing(trained):
  original = open(os.path.join(trained, "config.json")).read()
  exp = th.tiny_experiment(steps=8, learning_rate=1.0, checkpoint_every=1)
  with pytest.raises(train.NonFiniteLossError):
    train.run(exp, trained, data_source=th.wrapped_source(exp, th.nan_on_batch(1)))
  assert open(os.path.join(trained, "config.json")).read() == original
  assert not os.path.exists(os.path.join(trained, resume.HISTORY_FILE))
  assert th.checkpoint_steps(trained) == [4]


def test_resumed_steps_are_not_logged_twice(tmp_path):
  workdir = str(tmp_path / "run")
  exp = th.tiny_experiment(steps=6, checkpoint_every=3)
  train.run(exp, workdir)
  # What a run killed after logging steps 4-6 but before saving step 6 leaves behind.
  import shutil
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 7, "split": "tr')  # and a torn line
  assert train.run(exp, workdir).step == 6
  steps = [r["step"] for r in th.read_metrics(workdir)]
  assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("text", ['{"model": {', "[1, 2]"])
def test_a_malformed_config_json_names_the_file(trained, text):
  path = os.path.join(trained, "config.json")
  with open(path, "w") as f:
    f.write(text)
  with pytest.raises(CheckpointError, match=path):
    runs.read_experiment(trained)
  with pytest.raises(CheckpointError, match=path):
    train.run(th.tiny_experiment(steps=6), trained)
