"""Resuming a run: may the new config continue the checkpoints of the stored one?

A work directory's ``config.json`` describes its checkpoints and is written once, when
the run starts fresh. A later command in the same directory resumes only if it differs
from the stored config in fields that do not change what the checkpoints hold or how the
data continues (:data:`MAY_CHANGE_ON_RESUME`: the step budget, the learning-rate
schedule, logging, evaluation and checkpoint cadence, the device layout). Any other
difference (the model's shape, the tokenizer or dataset, the encoding, the batch, the
seed) is refused before anything is written, listing every differing field. Accepted
changes are appended to ``config_history.jsonl`` once the run has saved a checkpoint under
them, so the original config is never overwritten and a run that fails (a NaN loss under
a new learning rate) leaves no record of a config that never produced a checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from rope_lab.errors import CheckpointError, WorkdirError

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

MAY_CHANGE_ON_RESUME = frozenset({
    "train.steps", "train.learning_rate", "train.lr_schedule", "train.warmup_steps",
    "train.min_lr_ratio", "train.weight_decay", "train.grad_clip_norm",
    "train.grad_accum_steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints", "train.async_checkpointing",
    "train.tensorboard", "train.mesh_shape", "train.logical_rules",
    # init_from only chooses the starting parameters of a fresh run; a resume ignores it.
    "train.init_from",
    # where the prepared data lives, not what it is
    "data.data_dir", "data.auto_prepare",
})


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(values, dict):
    flat = {}
    for key, value in values.items():
      flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
  if isinstance(values, tuple):
    values = [list(v) if isinstance(v, tuple) else v for v in values]
  return {prefix: values}


def config_differences(stored: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (stored value, new value)} for every field both configs have that differs.

  A field only one of them has is a field the code gained or lost since the run started
  (it held its default then) or a parameter of another encoding, whose change shows in
  ``pe.name``; neither is compared.
  """
  old_flat, new_flat = _flatten(stored), _flatten(json.loads(json.dumps(new)))
  return {name: (old_flat[name], new_flat[name])
          for name in sorted(set(old_flat) & set(new_flat))
          if old_flat[name] != new_flat[name]}


def read_stored_config(workdir: str) -> dict | None:
  """The config.json of ``workdir`` as a dict; None if there is none; an error naming the
  file if it is not a JSON object."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      values = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}); it describes the run's checkpoints, "
                          f"so restore it (from a copy, or rewrite it with the run's config) "
                          f"or start a new --workdir") from None
  if not isinstance(values, dict):
    raise CheckpointError(f"{path} holds a {type(values).__name__}, not the run's config object; "
                          f"restore it or start a new --workdir")
  return values


def check_resume(workdir: str, new: dict, latest_step: int) -> dict[str, tuple[Any, Any]]:
  """Validates resuming ``workdir``'s checkpoints (newest ``latest_step``) under ``new``.

  Returns the accepted changes (empty if none). Raises WorkdirError listing the fields
  that cannot change, or when ``new``'s step budget is below the checkpoint's step.
  """
  stored = read_stored_config(workdir)
  if stored is None:
    raise WorkdirError(f"{workdir} holds checkpoints (newest step {latest_step}) but no "
                       f"{CONFIG_FILE} describing them; restore it or start a new --workdir")
  changes = config_differences(stored, new)
  refused = {name: change for name, change in changes.items() if name not in MAY_CHANGE_ON_RESUME}
  if refused:
    listed = "; ".join(f"{name}: {old!r} -> {value!r}" for name, (old, value) in refused.items())
    raise WorkdirError(
        f"cannot resume {workdir} (checkpoint at step {latest_step}) with a different "
        f"{', '.join(refused)}: {listed}. These change what the checkpoints hold; start a new "
        f"--workdir (with --config.init_from={workdir} to start from these parameters)")
  steps = new.get("train", {}).get("steps")
  if steps is not None and steps < latest_step:
    raise WorkdirError(
        f"config.steps={steps} is below the newest checkpoint of {workdir} (step "
        f"{latest_step}); a resume only trains forward: give --config.steps >= {latest_step}")
  return {name: change for name, change in changes.items() if name != "train.init_from"}


def record_changes(workdir: str, changes: dict[str, tuple[Any, Any]], step: int) -> None:
  """Appends the accepted resume changes, effective from ``step``, to config_history.jsonl."""
  if not changes:
    return
  entry = {"time": round(time.time(), 3), "resumed_at_step": step,
           "changes": {name: {"from": old, "to": new} for name, (old, new) in changes.items()}}
  with open(os.path.join(workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
    f.write(json.dumps(entry) + "\n")


def current_config(workdir: str) -> dict | None:
  """config.json with the changes of config_history.jsonl applied in order."""
  values = read_stored_config(workdir)
  path = os.path.join(workdir, HISTORY_FILE)
  if values is None or not os.path.isfile(path):
    return values
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      for name, change in json.loads(line)["changes"].items():
        *sections, field = name.split(".")
        target = values
        for section in sections:
          target = target.setdefault(section, {})
        target[field] = change["to"]
  return values
