"""Shared pieces of the training tests: configs, data wrappers, reading results."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import warnings

import numpy as np
import orbax.checkpoint as ocp

from rope_lab import config as config_lib
from rope_lab.training import loop as train
from tests import tiny_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_experiment(pe: str | None = None, **top_level) -> config_lib.ExperimentConfig:
  """tests/tiny_config.py with top-level (TrainConfig) or 'section__field' overrides;
  ``pe="name"`` (or ``pe="name:param=value,..."``, values as config arguments) picks the encoding."""
  config = tiny_config.get_config(None if pe is None else f"pe={pe.split(':')[0]}")
  if pe is not None and ":" in pe:
    for item in pe.split(":", 1)[1].split(","):
      field, value = item.split("=")
      config.pe[field] = type(config.pe[field])(value) if config.pe[field] is not None else float(value)
  for key, value in top_level.items():
    target = config
    *sections, field = key.split("__")
    for section in sections:
      target = target[section]
    target[field] = value
  return config_lib.experiment_from_config_dict(config)


def load_config_file(path: str, arg: str | None = None):
  """``get_config(arg)`` of a config file, given relative to the repository root."""
  spec = importlib.util.spec_from_file_location("config_under_test", os.path.join(REPO_ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def read_metrics(workdir: str, split: str = "train") -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [row for row in rows if row["split"] == split]


def checkpoint_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def saved_params(workdir: str, step: int) -> dict[str, np.ndarray]:
  """Flat {path: array} of the parameters stored at ``step``."""
  path = os.path.join(workdir, "checkpoints", str(step), "params")
  with warnings.catch_warnings():  # "sharding info not provided": host arrays are wanted
    warnings.simplefilter("ignore", UserWarning)
    tree = ocp.PyTreeCheckpointer().restore(path)
  flat = {}

  def visit(prefix, node):
    if isinstance(node, dict):
      for key, value in node.items():
        visit(f"{prefix}/{key}", value)
    else:
      flat[prefix] = np.asarray(node)
  visit("", tree)
  return flat


class _Wrapped:
  """A data iterator that calls ``on_batch(i, batch)`` on the i-th batch it yields (1-based)."""

  def __init__(self, inner, on_batch):
    self._inner, self._on_batch, self._count = inner, on_batch, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self._inner))
    self._count += 1
    return self._on_batch(self._count, batch)

  def get_state(self):
    return self._inner.get_state()

  def set_state(self, state):
    self._inner.set_state(state)


def wrapped_source(exp, on_batch) -> train.DataSource:
  """The project's data pipeline with ``on_batch`` applied to training batches."""
  base = train.rope_lab_data_source(exp.data)

  def make(split, **kwargs):
    iterator = base(split, **kwargs)
    return _Wrapped(iterator, on_batch) if split == exp.data.train_split else iterator
  return make


def sigterm_on_batch(n: int):
  """on_batch that signals this process while step ``n``'s batch is being fetched."""
  def on_batch(i, batch):
    if i == n:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch
  return on_batch


def nan_on_batch(n: int):
  """on_batch that poisons step ``n``'s loss mask with NaN (so its loss is NaN)."""
  def on_batch(i, batch):
    if i == n:
      batch["loss_mask"] = np.full_like(batch["loss_mask"], np.nan)
    return batch
  return on_batch


# Test-sized programs compile several times faster without LLVM's expensive passes; the
# subprocess tests check behaviour, not speed.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def subprocess_env(**extra) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FAST_COMPILE_XLA_FLAGS).strip()
  env.update(extra)
  return env


PYTHON = sys.executable


def train_in_two_processes(workdir: str, *flags: str, timeout: float = 240) -> None:
  """``experiments.train`` on tests/tiny_config.py as two processes (gloo); asserts both exit 0."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  processes = [
      subprocess.Popen(
          [PYTHON, "-m", "experiments.train", "--config=tests/tiny_config.py", f"--workdir={workdir}",
           *flags, f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--process_id={index}"],
          cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for index in range(2)]
  try:
    outputs = [p.communicate(timeout=timeout) for p in processes]
  finally:
    for p in processes:  # a process whose peer died would otherwise wait for it
      if p.poll() is None:
        p.kill()
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-3000:]
