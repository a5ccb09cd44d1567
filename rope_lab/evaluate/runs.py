"""Trained runs as evaluation inputs: a work directory -> typed configs and parameters.

A training run leaves ``config.json`` (the resolved experiment) and orbax checkpoints in
its work directory. Evaluation rebuilds the typed configs from the JSON, restores the
parameters of the newest (or a chosen) step, and can then apply any encoding to them:
the encoding is an argument of the forward pass, not part of the parameters (learned
APE's table aside, whose size the checkpoint fixes).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from rope_lab.training import checkpoint
from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab.training import resume
from rope_lab.running import sharding
from rope_lab.data import DataConfig
from rope_lab.errors import CheckpointError, MissingFileError
from rope_lab.model.forward import encoding_hooks, param_layout
from rope_lab.model.skeleton import ModelConfig


def experiment_from_json(values: dict[str, Any]) -> config_lib.ExperimentConfig:
  """The dict ``config_lib.experiment_to_dict`` wrote -> ExperimentConfig (checked like a config file)."""
  missing = [name for name in ("model", "data", "pe", "train") if name not in values]
  if missing:
    raise ValueError(f"run config lacks section(s) {missing}; has {sorted(values)}")
  return config_lib.ExperimentConfig(
      model=config_lib.dataclass_from_mapping(ModelConfig, values["model"], "config.model"),
      data=config_lib.dataclass_from_mapping(DataConfig, values["data"], "config.data"),
      encoding=pe.from_dict(values["pe"]),
      train=config_lib.dataclass_from_mapping(config_lib.TrainConfig, values["train"], "config"),
  )


def read_experiment(workdir: str) -> config_lib.ExperimentConfig:
  """The experiment of a training run's work directory, with the changes accepted on its
  resumes applied (``rope_lab.training.resume``); errors name the file and say what to do."""
  values = resume.current_config(workdir)
  if values is None:
    raise MissingFileError(f"{workdir!r} is not a training run directory: no config.json; give "
                           f"the --workdir of a run of python -m experiments.train")
  try:
    return experiment_from_json(values)
  except (ValueError, TypeError, KeyError) as e:
    raise CheckpointError(f"{os.path.join(workdir, 'config.json')} does not describe a run "
                          f"({e}); restore it or train again in a new work directory") from None


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A checkpoint ready to evaluate: its experiment, its parameters and the step they are from."""

  workdir: str
  exp: config_lib.ExperimentConfig
  params: Any
  step: int

  @property
  def model(self) -> ModelConfig:
    return self.exp.model

  @property
  def train_length(self) -> int:
    return self.exp.train.seq_len

  @property
  def encoding(self) -> pe.Encoding:
    """The encoding the run was trained with."""
    return self.exp.encoding


def load_run(workdir: str, step: int | None = None) -> TrainedRun:
  """Restores the parameters of ``workdir``'s newest step (or ``step``) on this host's devices."""
  exp = read_experiment(workdir)
  step = checkpoint.latest_step_of(workdir, "--workdir") if step is None else step
  mesh = sharding.make_mesh(exp.train.mesh_shape)
  hooks = encoding_hooks(exp.model, exp.encoding, exp.train.seq_len)
  abstract, _ = param_layout(exp.model, hooks, exp.train.seq_len, mesh, exp.train.logical_rules)
  params = checkpoint.restore_params(workdir, abstract, step, "--workdir")
  params = jax.tree.map(lambda x: x, params)  # plain arrays, independent of the manager
  return TrainedRun(workdir=workdir, exp=exp, params=params, step=step)
