"""The one coercer of rope_lab: a value checked against a type annotation.

Config files, JSON and command lines give ints where floats are meant, lists where tuples
are meant, numpy scalars from computations; the typed configs (rope_lab/config.py) and
the encodings' parameters (rope_lab/pe) both accept exactly these widenings through
:func:`coerce` and reject everything else with a ConfigError naming the field.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

import numpy as np

from rope_lab.errors import ConfigError


def coerce(value: Any, hint: Any, where: str) -> Any:
  """Checks ``value`` against a type annotation; ints widen to float, lists to tuples."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any or hint is typing.Any:
    return value
  if origin in (Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    for option in (a for a in args if a is not type(None)):
      try:
        return coerce(value, option, where)
      except ConfigError:
        pass
    raise ConfigError(f"{where} must be {_describe(hint)}, got {value!r}")
  if origin is Literal:
    if value in args:
      return value
    raise ConfigError(f"{where} must be one of {args}, got {value!r}")
  if origin is tuple or hint is tuple:
    if not isinstance(value, (tuple, list, np.ndarray)):
      raise ConfigError(f"{where} must be {_describe(hint)}, got {value!r}")
    if not args or (len(args) == 2 and args[1] is Ellipsis):
      item = args[0] if args else Any
      return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
      raise ConfigError(f"{where} must have {len(args)} entries, got {value!r}")
    return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
  if hint is float:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
      return float(value)
  elif hint is int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
      return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
      return int(value)  # 4.0 from JSON or a YAML-ish file is the int 4; 4.5 is an error
  elif hint is bool:
    if isinstance(value, (bool, np.bool_)):
      return bool(value)
  elif isinstance(hint, type):
    if isinstance(value, hint):
      return value
  else:
    return value
  raise ConfigError(f"{where} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _describe(hint) -> str:
  if isinstance(hint, type):
    return hint.__name__
  return str(hint).replace("typing.", "")
