"""Orbax checkpoints of the model state together with every process's data position.

A checkpoint step holds three items:

* ``params``: the parameters (also what a fine-tuning run reads, see :func:`restore_params`);
* ``optimizer``: the step counter and the optimizer state (and, for a LoRA run, its
  adapters and the frozen kernels under them: ``rope_lab.training.step.TrainState``);
* ``data``: one JSON file per process with its iterator's ``get_state()``.

Orbax writes each step into a temporary directory and renames it when every item and
process is done, so a step interrupted half-way is never listed; leftovers are removed
when the manager opens the directory.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging as py_logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rope_lab.errors import CheckpointError, MissingFileError

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("params", "optimizer", "data")


# ----------------------------------------------------------------------------- data state


def _to_json(value: Any) -> Any:
  """Iterator states may hold numpy scalars or bytes; make them JSON values reversibly."""
  if isinstance(value, dict):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, bytes):
    return {"__bytes__": base64.b64encode(value).decode("ascii")}
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return value


def _from_json(value: Any) -> Any:
  if isinstance(value, dict):
    if set(value) == {"__bytes__"}:
      return base64.b64decode(value["__bytes__"])
    return {k: _from_json(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_from_json(v) for v in value]
  return value


def _process_file(directory: epath.Path) -> epath.Path:
  return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class DataStateHandler(ocp.CheckpointHandler):
  """Saves and restores this process's data-iterator state as a JSON file.

  Every process writes its own file (the iterators differ per process); orbax commits
  the step only after all processes have written.
  """

  def save(self, directory: epath.Path, args: "DataStateSave"):
    _process_file(directory).write_text(json.dumps(_to_json(args.state)))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
    path = _process_file(directory)
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir())
      raise CheckpointError(
          f"no data-iterator state {path.name} in {directory} (found {found}); a run can "
          f"resume only with the process count it was saved with")
    return _from_json(json.loads(path.read_text()))


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


# ----------------------------------------------------------------------------- manager


def checkpoint_directory(workdir: str | epath.Path) -> epath.Path:
  """``<workdir>/checkpoints``, absolute for local paths (orbax refuses relative ones)."""
  text = os.fspath(workdir)
  if "://" not in text:
    text = os.path.abspath(text)
  return epath.Path(text) / CHECKPOINT_DIR


def committed_latest_step(workdir: str) -> int | None:
  """The newest committed step of ``workdir``'s own checkpoints, None if it has none.

  Read-only: unlike opening a :class:`Checkpointer`, this never removes a temporary
  directory, so it is safe to call before the run knows whether it may resume.
  """
  if not checkpoint_directory(workdir).exists():
    return None
  with _read_only_manager(workdir, role="work directory") as manager:
    return manager.latest_step()


class Checkpointer:
  """Periodic, final and preemption saves of one run, keeping the newest ``keep``."""

  def __init__(self, workdir: str | epath.Path, *, keep: int, async_save: bool):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=async_save,
        # A step whose writer was killed stays a *.orbax-checkpoint-tmp directory; it is
        # never listed as a step, and this removes it when the next run starts.
        cleanup_tmp_directories=True,
    )
    self.directory = checkpoint_directory(workdir)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_state: Any) -> None:
    """Saves ``state`` (a TrainState) and this process's iterator state as ``step``."""
    optimizer = {"step": state.step, "opt_state": state.opt_state}
    if state.adapters is not None:
      optimizer["adapters"] = state.adapters
    self._manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            optimizer=ocp.args.StandardSave(optimizer),
            data=DataStateSave(data_state),
        ),
        force=True,
    )

  def restore(self, step: int, abstract_state):
    """-> (state with the shardings of ``abstract_state``, this process's iterator state)."""
    abstract_optimizer = {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
    if abstract_state.adapters is not None:
      abstract_optimizer["adapters"] = abstract_state.adapters
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            optimizer=ocp.args.StandardRestore(abstract_optimizer),
            data=DataStateRestore(),
        ),
    )
    optimizer = restored["optimizer"]
    state = abstract_state.replace(
        step=optimizer["step"], params=restored["params"], opt_state=optimizer["opt_state"],
        adapters=optimizer.get("adapters"))
    return state, restored["data"]

  def wait(self) -> None:
    """Blocks until a background save has been committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class _DropReadOnlyNotices(py_logging.Filter):
  """Orbax warns on every read-only open of a checkpoint directory, which is how rope_lab
  reads another run's parameters (fine-tuning, evaluation); those two lines are noise."""

  NOTICES = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")

  def filter(self, record: py_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in self.NOTICES)


_ABSL_LOGGER = py_logging.getLogger("absl")
if not any(isinstance(f, _DropReadOnlyNotices) for f in _ABSL_LOGGER.filters):
  _ABSL_LOGGER.addFilter(_DropReadOnlyNotices())


def _read_only_manager(run_dir: str, role: str = "config.init_from") -> ocp.CheckpointManager:
  directory = checkpoint_directory(run_dir)
  if not directory.exists():
    raise MissingFileError(f"{role}={run_dir!r}: no {CHECKPOINT_DIR}/ directory there, so no "
                           f"trained model; give the work directory of a training run (train "
                           f"one with python -m experiments.train --workdir=...)")
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  handlers = {"params": ocp.StandardCheckpointHandler(),
              "optimizer": ocp.StandardCheckpointHandler(), "data": DataStateHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def latest_step_of(run_dir: str, role: str = "config.init_from") -> int:
  """The newest committed step of another run; MissingFileError naming ``role`` if none."""
  with _read_only_manager(run_dir, role) as manager:
    step = manager.latest_step()
  if step is None:
    raise MissingFileError(f"{role}={run_dir!r}: {checkpoint_directory(run_dir)} holds no "
                           f"committed checkpoint (was its training run stopped before the "
                           f"first save?)")
  return step


def restore_params(run_dir: str, abstract_params, step: int | None = None,
                   role: str = "config.init_from"):
  """Parameters of another run (its newest step by default), laid out as ``abstract_params``.

  Raises MissingFileError naming ``run_dir`` when it holds no committed checkpoint, and
  CheckpointError when the stored shapes differ from the model's.
  """
  step = latest_step_of(run_dir, role) if step is None else step
  with _read_only_manager(run_dir, role) as manager:
    stored = manager.item_metadata(step)["params"]
    _check_same_shapes(stored, abstract_params, run_dir, role)
    restored = manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
  return restored["params"]


def _check_same_shapes(stored, wanted, run_dir: str, role: str) -> None:
  stored_shapes = {jax.tree_util.keystr(p): tuple(x.shape)
                   for p, x in jax.tree_util.tree_leaves_with_path(stored)}
  wanted_shapes = {jax.tree_util.keystr(p): tuple(x.shape)
                   for p, x in jax.tree_util.tree_leaves_with_path(wanted)}
  if stored_shapes != wanted_shapes:
    only_stored = sorted(set(stored_shapes) - set(wanted_shapes))
    only_wanted = sorted(set(wanted_shapes) - set(stored_shapes))
    differ = sorted(k for k in set(stored_shapes) & set(wanted_shapes)
                    if stored_shapes[k] != wanted_shapes[k])
    raise CheckpointError(
        f"{role}={run_dir!r}: its parameters do not fit this model: "
        f"only in the checkpoint {only_stored[:5]}, only in the model {only_wanted[:5]}, "
        f"different shapes {[(k, stored_shapes[k], wanted_shapes[k]) for k in differ[:5]]}")


# ----------------------------------------------------------------------------- safetensors


def check_safetensors_complete(model_dir: str) -> None:
  """Every ``*.safetensors`` file of ``model_dir`` is as long as its header says.

  A safetensors file starts with an 8-byte little-endian header length, then a JSON header
  giving each tensor's byte range in the data that follows. A truncated download passes
  the header and fails later with a SafetensorError that does not name the file; this
  reads only the headers and names the file.
  """
  remedy = "download or copy the checkpoint again"
  for name in sorted(os.listdir(model_dir)):
    if not name.endswith(".safetensors"):
      continue
    path = os.path.join(model_dir, name)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      prefix = f.read(8)
      if len(prefix) < 8:
        raise CheckpointError(f"{path} is truncated ({size} bytes, not even a header); {remedy}")
      header_len = int.from_bytes(prefix, "little")
      if 8 + header_len > size:
        raise CheckpointError(f"{path} is truncated ({size:,} bytes, its header alone needs "
                              f"{8 + header_len:,}); {remedy}")
      try:
        header = json.loads(f.read(header_len))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} has an unreadable header ({e}); {remedy}") from None
    data_end = max((entry["data_offsets"][1] for key, entry in header.items()
                    if key != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
      raise CheckpointError(f"{path} is truncated ({size:,} bytes, its header describes "
                            f"{8 + header_len + data_end:,}); {remedy}")
