"""What every config file shares: typed ``key=value`` arguments, the ``pe`` section, sweeps.

Imports only ml_collections, so loading a config file stays cheap (no JAX, flax or grain)
and a notebook can build and print a config before deciding to train anything.

Arguments follow big_vision's ``parse_arg``: ``configs/tiny_cpu.py:pe=yarn,factor=4,seq=512``
gives ``get_config("pe=yarn,factor=4,seq=512")``, and::

  arg = common.parse_arg(arg, "configs/tiny_cpu.py", pe="rope", factor=0.0, seq=128, smoke=False)

returns ``arg.pe == "yarn"``, ``arg.factor == 4.0`` (typed after the default), ``arg.seq == 512``
and ``arg.smoke == False``; a bare key (``smoke``) sets a boolean to True. An unknown key or a
value of the wrong type is a ValueError naming the file and the key.

Sweeps follow big_vision's ``get_hyper``: a config file's ``get_sweep(arg)`` returns a list of
points built with :func:`sweep`, :func:`product` and :func:`zipped`. A point is a dict whose
``config.<field>`` keys override config fields (as ``--config.<field>=`` would) and whose other
keys are config arguments (``pe``, ``factor``, ...), which rebuild the config.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

# ----------------------------------------------------------------------------- arguments

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _typed(text: str, default: Any, where: str) -> Any:
  """``text`` as the type of ``default`` (None: int, float, bool or str, whichever parses)."""
  if isinstance(default, bool):
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    raise ValueError(f"{where} must be a bool (true/false), got {text!r}")
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"{where} must be an int, got {text!r}") from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"{where} must be a float, got {text!r}") from None
  if isinstance(default, str):
    return text
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def parse_arg(arg: str | None, where: str, **defaults) -> ml_collections.ConfigDict:
  """``"k1=v1,flag,k2=v2"`` -> a ConfigDict of ``defaults`` updated by the argument.

  ``where`` names the config file in error messages. Values take the type of their
  default (ints widen to float where the default is a float); a key without ``=`` sets a
  boolean to True.
  """
  values = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, has_value, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"{where}: unknown argument {key!r}; its arguments: "
                       f"{', '.join(f'{k}={v!r}' for k, v in defaults.items())}")
    if not has_value:
      if not isinstance(defaults[key], bool):
        raise ValueError(f"{where}: argument {key!r} needs a value ({key}=...)")
      values[key] = True
    else:
      values[key] = _typed(text.strip(), defaults[key], f"{where}: argument {key!r}")
  return ml_collections.ConfigDict(values)


# ----------------------------------------------------------------------------- encodings

# Every parameter of every registered encoding (rope_lab/pe), with its default; a type
# stands for "unset" (the method's default, or required). config.pe holds ``name`` plus
# exactly one row of this table, so ``--config.pe.<param>=`` reaches any parameter of the
# chosen method and nothing else. tests/test_config.py checks the table against the
# registry, so a new method or parameter there fails loudly until it is listed here.
_ROTARY = {"base": 10000.0, "rotary_fraction": 1.0, "layout": "half"}
_YARN_RAMP = {**_ROTARY, "original_max_position_embeddings": int, "beta_fast": 32.0,
              "beta_slow": 1.0, "truncate": True}
_YARN_TEMPERATURE = {"attention_factor": float, "mscale": float, "mscale_all_dim": float}
_APE_EXTENSION = {"extension": "none", "original_max_position_embeddings": int,
                  "extension_factor": 1.0, "extension_mode": "per_input"}
_TEMPERATURE_TUNING = {"attn_temperature_tuning": False, "floor_scale": 8192.0, "attn_scale": 0.1}
PE_PARAMETERS: dict[str, dict[str, Any]] = {
    "alibi": {"max_bias": 8.0},
    "dynamic_ntk": {**_ROTARY, "factor": float, "original_max_position_embeddings": int},
    "dual_chunk": {**_ROTARY, "original_max_position_embeddings": int, "chunk_size": int,
                   "local_window": int},
    "dynamic_yarn": {**_YARN_RAMP, **_YARN_TEMPERATURE},
    "hope": {**_ROTARY, "original_max_position_embeddings": int},
    "leaky_rerope": {**_ROTARY, "window": 512, "training_length": int, "leak": 16.0},
    "learned": {**_APE_EXTENSION, "max_length": 512},
    "llama3": {**_ROTARY, "base": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "longrope": {**_ROTARY, "short_factor": tuple, "long_factor": tuple,
                 "original_max_position_embeddings": int, "factor": float,
                 "max_position_embeddings": int, "attention_factor": float, "n_hat": 0, "head_dim": int,
                 "require_monotone": True},
    "logn": {**_ROTARY, "original_max_position_embeddings": int, "dynamic_ntk": "qwen"},
    "nope": dict(_TEMPERATURE_TUNING),
    "ntk": {**_ROTARY, "alpha": float},
    "ntk_by_parts": {**_YARN_RAMP, "factor": float},
    "per_layer": {"layer_pattern": str, "local_base": 10000.0, "global_base": 1000000.0,
                  "global_factor": 1.0, "rotary_fraction": 1.0, "layout": "half",
                  **_TEMPERATURE_TUNING},
    "pi": {**_ROTARY, "factor": float},
    "power": {**_ROTARY, "factor": 1.0, "power": 0.5},
    "proportional": {**_ROTARY, "rope_proportion": 1.0, "factor": 1.0},
    "randomized": {**_ROTARY, "max_position": int, "evaluation": "sampled", "evaluation_seed": 0},
    "rerope": {**_ROTARY, "window": 512, "training_length": int},
    "resonance": dict(_ROTARY),
    "rope": dict(_ROTARY),
    "self_extend": {**_ROTARY, "group_size": 8, "window": 512,
                    "original_max_position_embeddings": int},
    "sinusoidal": {**_APE_EXTENSION, "layout": "interleaved", "min_timescale": 1.0,
                   "max_timescale": 10000.0},
    "string": {**_ROTARY, "shifted_offset": int, "local_value": 128},
    "streaming_llm": {**_ROTARY, "sinks": 4, "window": int},
    "truncated": {**_ROTARY, "factor": 1.0, "cutoff_wavelength": float, "zero_ratio": 8.0,
                  "rho_ratio": 16.0},
    "xpos": {**_ROTARY, "layout": "interleaved", "scale_base": 512.0, "gamma": 0.4},
    "yarn": {**_YARN_RAMP, "factor": float, **_YARN_TEMPERATURE},
}


def pe_config(name: str, *, context: dict[str, Any] | None = None,
              **params) -> ml_collections.ConfigDict:
  """``config.pe``: ``name`` and every parameter of that method, nothing of any other.

  ``params`` must be parameters of the method (else a ValueError listing them).
  ``context`` holds facts about the run that a method uses if it has the parameter, e.g.
  ``{"base": 10000.0, "original_max_position_embeddings": 128}`` for a model pretrained
  at 128 tokens with base 10000: they apply to the methods that take them and are
  ignored by the others. Unset parameters are typed placeholders (None: the method's
  default); rope_lab/config.py validates the values.
  """
  if name not in PE_PARAMETERS:
    raise ValueError(f"config.pe.name must be one of {sorted(PE_PARAMETERS)}, got {name!r}")
  table = PE_PARAMETERS[name]
  unknown = sorted(set(params) - set(table))
  if unknown:
    raise ValueError(f"config.pe: encoding {name!r} has no parameter(s) {unknown}; "
                     f"its parameters: {', '.join(table) or 'none'}")
  section = ml_collections.ConfigDict({"name": name})
  for key, default in table.items():
    value = params.get(key, (context or {}).get(key, default))
    section[key] = config_dict.placeholder(value) if isinstance(value, type) else value
  return section


# ----------------------------------------------------------------------------- sweeps


def embedding_multiplier(pe_name: str, d_model: int) -> float:
  """The token-embedding multiplier that goes with an encoding: sqrt(d_model) with the sinusoidal
  table (Vaswani et al. 2017, §3.4), so that the fixed unit-amplitude table does not swamp token
  embeddings initialised at std 0.02; 1 otherwise."""
  return math.sqrt(d_model) if pe_name == "sinusoidal" else 1.0


def sinusoidal_ape_model(d_model: int) -> str:
  """A study's sinusoidal-APE model declared with its embedding multiplier (configs/study.py)."""
  return f"sinusoidal | model.embedding_multiplier={embedding_multiplier('sinusoidal', d_model)!r}"


def sweep(key: str, values) -> list[dict[str, Any]]:
  """One axis: ``sweep("config.seed", [0, 1])`` -> ``[{"config.seed": 0}, {"config.seed": 1}]``."""
  values = list(values)
  if not values:
    raise ValueError(f"sweep({key!r}, ...) has no values")
  return [{key: value} for value in values]


def _merge(points: tuple[dict[str, Any], ...]) -> dict[str, Any]:
  merged: dict[str, Any] = {}
  for point in points:
    shared = set(merged) & set(point)
    if shared:
      raise ValueError(f"a sweep sets {sorted(shared)} twice in one point")
    merged.update(point)
  return merged


def product(*axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Every combination, the last axis varying fastest (as nested loops)."""
  return [_merge(points) for points in itertools.product(*axes)]


def zipped(*axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Points taken together, position by position; the axes must be equally long."""
  lengths = sorted({len(axis) for axis in axes})
  if len(lengths) > 1:
    raise ValueError(f"zipped sweeps must have equal lengths, got {[len(a) for a in axes]}")
  return [_merge(points) for points in zip(*axes)]
