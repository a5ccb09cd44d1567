"""A config file's sweep -> a list of runs, each with a stable name, directory and command.

A config file may define ``get_sweep(arg)`` beside ``get_config(arg)`` (configs/common.py's
``sweep``/``product``/``zipped``): a list of points, each a dict whose ``config.<field>``
keys override config fields and whose other keys are config arguments. :func:`expand`
turns ``configs/X.py:arg`` into one :class:`Run` per point and checks, before anything
runs, that every point builds a valid config (the entry point's own boundary), that no
two points share a directory, and that every override exists in the config.

A run's name depends only on its point (``pe-yarn_seq-512_learning_rate-0.0001``), so the
same sweep always gives the same names and adding a point never renames the others. A
point may name its run itself (``"name": "base_s0"``, the ``NAME_KEY``): the reference
study does, so its runs keep the names the study looks them up by.

A ``config.<field>`` string value may contain ``{sweep_dir}``, replaced by the sweep's
directory: a fine-tune names the run it starts from (``{sweep_dir}/base_s0``) without
knowing where the sweep writes. A config file whose arguments choose the entry point
defines ``get_entry_point(arg)``; otherwise its ``ENTRY_POINT`` (default experiments.train).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from rope_lab.errors import ConfigError

DEFAULT_ENTRY_POINT = "experiments.train"
# Each entry point's config boundary: called on the built ConfigDict, it raises a
# ConfigError for a value the run would reject.
VALIDATORS = {
    "experiments.train": "rope_lab.config:experiment_from_config_dict",
    "experiments.study": "rope_lab.study:study_config_from_config_dict",
    "experiments.evaluate": "rope_lab.evaluate.checkpoint_eval:evaluation_from_config_dict",
}
CONFIG_PREFIX = "config."
NAME_KEY = "name"  # a point's own name for its run (neither an argument nor a field)
SWEEP_DIR = "{sweep_dir}"  # in a config.<field> string value: the sweep's directory


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of a sweep: what it sets, where it writes and how it is started."""

  name: str  # stable, from the point's values; the run's directory under the sweep's
  point: tuple[tuple[str, Any], ...]  # the sweep point, in its declared key order
  config_flag: str  # "configs/X.py:arg" with the point's arguments merged in
  overrides: tuple[str, ...]  # "--config.<field>=<value>" for the point's config fields
  workdir: str
  entry_point: str = DEFAULT_ENTRY_POINT

  def argv(self, python: str = "python") -> list[str]:
    """The command that runs this point from the repository root."""
    return [python, "-m", self.entry_point, f"--config={self.config_flag}", *self.overrides,
            f"--workdir={self.workdir}"]

  @property
  def values(self) -> dict[str, Any]:
    return dict(self.point)


def split_config_spec(spec: str) -> tuple[str, str]:
  """``"configs/x.py:a=1,b"`` -> ``("configs/x.py", "a=1,b")``."""
  path, _, arg = spec.partition(":")
  return path, arg


def load_config_module(path: str):
  """The config file as a module (loaded by path, as ml_collections' config flags do)."""
  if not os.path.isfile(path):
    raise ConfigError(f"--config: no config file {path!r} (paths are relative to the "
                      f"repository root, e.g. configs/tiny_cpu.py)")
  name = "rope_lab_sweep_config_" + re.sub(r"\W", "_", os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def format_value(value: Any, where: str) -> str:
  """A value as the text a config argument or a ``--config.<field>=`` flag parses back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (int, float, str)):
    return repr(value) if isinstance(value, float) else str(value)
  if isinstance(value, tuple):
    items = ", ".join(format_value(v, where) for v in value)
    return f"({items},)" if len(value) == 1 else f"({items})"
  raise ConfigError(f"{where}: sweep values must be bool, int, float, str or tuples of them, "
                    f"got {value!r}")


def merge_arg(arg: str, values: Mapping[str, Any], where: str) -> str:
  """The config argument ``arg`` with ``values`` set (replacing a key already there)."""
  items: dict[str, str | None] = {}
  for item in filter(None, (s.strip() for s in arg.split(","))):
    key, has_value, text = item.partition("=")
    items[key.strip()] = text.strip() if has_value else None
  for key, value in values.items():
    text = format_value(value, f"{where}: argument {key!r}")
    if any(c in text for c in ",=:") or not key.isidentifier():
      raise ConfigError(f"{where}: sweep argument {key}={value!r} cannot be written as "
                        f"key=value in a config argument (no ',', '=' or ':')")
    items[key] = text
  return ",".join(key if text is None else f"{key}={text}" for key, text in items.items())


def _name_part(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def run_name(point: Mapping[str, Any]) -> str:
  """``{"pe": "yarn", "config.seed": 1}`` -> ``"pe-yarn_seed-1"``; ``{}`` -> ``"run"``;
  a point with a ``name`` is named by it."""
  if NAME_KEY in point:
    name = point[NAME_KEY]
    if not isinstance(name, str) or _name_part(name) != name:
      raise ConfigError(f"sweep point {dict(point)}: {NAME_KEY!r} must be a non-empty string "
                        f"of letters, digits and . + - _, got {name!r}")
    return name
  parts = []
  for key, value in point.items():
    short = key[len(CONFIG_PREFIX):] if key.startswith(CONFIG_PREFIX) else key
    if isinstance(value, tuple):
      text = "-".join(format_value(v, key) for v in value)
    else:
      text = format_value(value, key)
    parts.append(f"{_name_part(short)}-{_name_part(text)}")
  return "_".join(parts) or "run"


def join_path(directory: str, name: str) -> str:
  """``directory/name`` for local paths and bucket URLs (gs://) alike."""
  return posixpath.join(directory, name) if "://" in directory else os.path.join(directory, name)


def _set_field(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
  """``config.<path> = value`` for an existing field, else a ConfigError naming it."""
  *parents, leaf = key[len(CONFIG_PREFIX):].split(".")
  section = config
  for depth, part in enumerate(parents):
    if not isinstance(section, ml_collections.ConfigDict) or part not in section:
      raise ConfigError(f"{where}: unknown sweep field {key!r}: the config has no "
                        f"{CONFIG_PREFIX + '.'.join(parents[:depth + 1])}")
    section = section[part]
  if not isinstance(section, ml_collections.ConfigDict) or leaf not in section:
    known = ", ".join(sorted(section)) if isinstance(section, ml_collections.ConfigDict) else ""
    raise ConfigError(f"{where}: unknown sweep field {key!r}; fields there: {known}")
  try:
    with section.unlocked():
      setattr(section, leaf, value)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: sweep value {key}={value!r} rejected: {e}") from None


def _validator(entry_point: str):
  target = VALIDATORS.get(entry_point)
  if target is None:
    return None
  module, _, function = target.partition(":")
  return getattr(importlib.import_module(module), function)


def parse_settings(settings: Sequence[str]) -> dict[str, Any]:
  """``["config.init_from=/runs/base", "config.steps=50"]`` -> their typed values (Python
  literals where they parse as one, else strings): config fields every run sets."""
  fixed = {}
  for setting in settings:
    key, has_value, text = setting.partition("=")
    if not has_value or not key.startswith(CONFIG_PREFIX):
      raise ConfigError(f"--set={setting!r}: expected config.<field>=<value>")
    try:
      fixed[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      fixed[key] = text
  return fixed


def expand(config_spec: str, workdir: str, *, fixed: Mapping[str, Any] | None = None,
           validate: bool = True) -> list[Run]:
  """``configs/X.py:arg`` and a sweep directory -> the runs of its ``get_sweep(arg)``.

  ``fixed`` holds ``config.<field>`` values every run sets (not part of the run names).
  A config file without ``get_sweep`` is a sweep of one run named ``run``. Every point's
  config is built and (with ``validate``) passed through the entry point's boundary, so a
  point the config rejects is a ConfigError naming the point before anything starts.
  """
  path, arg = split_config_spec(config_spec)
  where = f"--config={config_spec}"
  module = load_config_module(path)
  if hasattr(module, "get_entry_point"):
    entry_point = module.get_entry_point(arg or None)
  else:
    entry_point = getattr(module, "ENTRY_POINT", DEFAULT_ENTRY_POINT)
  try:
    points = module.get_sweep(arg or None) if hasattr(module, "get_sweep") else [{}]
  except ValueError as e:
    raise ConfigError(f"{where}: {e}") from None
  if not isinstance(points, Sequence) or not points or not all(isinstance(p, Mapping) for p in points):
    raise ConfigError(f"{where}: get_sweep must return a non-empty list of dicts, got {points!r}")
  by_name: dict[str, dict[str, Any]] = {}  # lowercased: one directory on any file system
  for point in points:
    try:
      name = run_name(point).lower()
    except ConfigError as e:
      raise ConfigError(f"{where}: {e}") from None
    if name in by_name:
      raise ConfigError(f"{where}: sweep points {by_name[name]} and {dict(point)} map to one "
                        f"directory {run_name(point)!r}; make their values distinct")
    by_name[name] = dict(point)
  check = _validator(entry_point) if validate else None
  runs = []
  for point in points:
    point = dict(point)
    args = {k: v for k, v in point.items() if not k.startswith(CONFIG_PREFIX) and k != NAME_KEY}
    shared = sorted(set(point) & set(fixed or {}))
    if shared:
      raise ConfigError(f"{where}: {shared} are both swept and fixed by --set")
    fields = {**(fixed or {}), **{k: v for k, v in point.items() if k.startswith(CONFIG_PREFIX)}}
    fields = {k: v.replace(SWEEP_DIR, workdir.rstrip("/")) if isinstance(v, str) else v
              for k, v in fields.items()}
    name = run_name(point)
    at = f"{where}, sweep point {point}"
    merged_arg = merge_arg(arg, args, at)
    try:
      config = module.get_config(merged_arg or None)
    except ValueError as e:
      raise ConfigError(f"{at}: {e}") from None
    for key, value in fields.items():
      _set_field(config, key, value, at)
    if check is not None:
      try:
        check(config)
      except ConfigError as e:
        raise ConfigError(f"{at}: {e}") from None
    runs.append(Run(
        name=name, point=tuple(point.items()),
        config_flag=f"{path}:{merged_arg}" if merged_arg else path,
        overrides=tuple(f"--{k}={format_value(v, at)}" for k, v in fields.items()),
        workdir=join_path(workdir, name), entry_point=entry_point))
  return runs
