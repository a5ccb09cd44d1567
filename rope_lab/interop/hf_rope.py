"""Hugging Face rope settings <-> rope_lab encoding configs.

Reads both the newer ``rope_parameters`` dictionary and the older ``rope_scaling`` +
``rope_theta`` form of a config.json, for rope types default, linear, dynamic, yarn,
longrope, llama3 and proportional, plus ``partial_rotary_factor`` (for "proportional" the
share of pairs that rotate, with the exponent over the whole head). The mapping follows what
transformers computes: e.g. "dynamic" uses ``max_position_embeddings`` as the original
length, and yarn/longrope fall back to max / original when ``factor`` is absent.
Per-layer settings (Gemma 3's ``rope_parameters`` keyed by ``layer_types``, Llama 4's
``no_rope_layers``) become a ``per_layer`` encoding; ``per_layer_to_hf`` writes them back.
"""

from __future__ import annotations

from typing import Any

from rope_lab import pe
from rope_lab.errors import ConfigError

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional")
# The rope_lab encodings those rope types express (encoding_to_hf refuses any other).
ENCODINGS_TO_HF = ("rope", "pi", "dynamic_ntk", "yarn", "longrope", "llama3", "proportional")


class HFConfigError(ConfigError):
  """A Hugging Face config field is missing, malformed or unsupported; the message names it."""


def _field(params: dict, key: str, where: str, kind=(int, float)):
  if key not in params or params[key] is None:
    raise HFConfigError(f"{where}: field {key!r} is required for rope_type {params.get('rope_type')!r}")
  value = params[key]
  if kind and not isinstance(value, kind) or isinstance(value, bool):
    raise HFConfigError(f"{where}: field {key!r} must be a number, got {value!r}")
  return value


def rope_parameters(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
  """The rope dictionary of a config.json in the newer form, and the field it came from."""
  if config.get("rope_parameters") is not None:
    params, where = dict(config["rope_parameters"]), "rope_parameters"
  elif config.get("rope_scaling") is not None:
    params, where = dict(config["rope_scaling"]), "rope_scaling"
  else:
    params, where = {}, "rope_parameters"
  if not isinstance(params, dict):
    raise HFConfigError(f"{where}: must be a dictionary, got {type(params).__name__}")
  params.setdefault("rope_type", params.pop("type", "default"))
  params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
  if "partial_rotary_factor" in config:
    params.setdefault("partial_rotary_factor", config["partial_rotary_factor"])
  return params, where


HF_LAYER_TYPES = {"sliding_attention": "L", "full_attention": "G"}


def _is_per_layer(config: dict[str, Any]) -> bool:
  params = config.get("rope_parameters") or {}
  return any(isinstance(v, dict) for v in params.values()) or bool(config.get("no_rope_layers"))


def _layer_rope(config: dict[str, Any], params: dict, where: str) -> pe.Encoding:
  """One layer type's rope settings; per-layer encodings take plain or linearly scaled RoPE."""
  enc = encoding_from_hf({**config, "rope_parameters": params, "no_rope_layers": None})
  if enc.name not in ("rope", "pi"):
    raise HFConfigError(f"{where}: per-layer encodings support rope_type 'default' or 'linear', "
                        f"got {params.get('rope_type')!r}")
  return enc


def per_layer_from_hf(config: dict[str, Any]) -> pe.Encoding:
  """Gemma-3-style ``rope_parameters`` per ``layer_types``, or Llama 4's ``no_rope_layers`` -> per_layer."""
  params = dict(config.get("rope_parameters") or {})
  nested = {k: v for k, v in params.items() if isinstance(v, dict)}
  if nested:
    unknown = sorted(set(nested) - set(HF_LAYER_TYPES))
    if unknown:
      raise HFConfigError(f"rope_parameters: layer types {unknown} are not supported; "
                          f"supported: {sorted(HF_LAYER_TYPES)}")
    layer_types = config.get("layer_types")
    if not layer_types or any(t not in nested for t in layer_types):
      raise HFConfigError(f"config: field 'layer_types' must name a rope_parameters entry for every layer, "
                          f"got {layer_types!r}")
    local = _layer_rope(config, nested.get("sliding_attention", {"rope_type": "default"}),
                        "rope_parameters.sliding_attention")
    glob = _layer_rope(config, nested.get("full_attention", {"rope_type": "default"}), "rope_parameters.full_attention")
    pattern = "".join(HF_LAYER_TYPES[t] for t in layer_types)
    extra = {}
  else:
    glob = _layer_rope(config, params, "rope_parameters")
    local = glob
    pattern = "".join("G" if use_rope else "N" for use_rope in config["no_rope_layers"])
    extra = {"attn_temperature_tuning": bool(config.get("attn_temperature_tuning", True)),
             "floor_scale": float(config.get("floor_scale", 8192)), "attn_scale": float(config.get("attn_scale", 0.1))}
  if local.rotary_fraction != glob.rotary_fraction:
    raise HFConfigError("rope_parameters: local and global layers must share partial_rotary_factor")
  return pe.make("per_layer", layer_pattern=pattern, local_base=local.base, global_base=glob.base,
                 global_factor=getattr(glob, "factor", 1.0), rotary_fraction=glob.rotary_fraction, **extra)


def per_layer_to_hf(encoding: pe.Encoding, *, n_layers: int) -> dict[str, Any]:
  """per_layer -> the config.json fields transformers reads back: Gemma 3's or Llama 4's form."""
  if encoding.name != "per_layer":
    raise HFConfigError(f"encoding {encoding.name!r} is not per-layer; use encoding_to_hf")
  kinds = set(encoding.layer_pattern)
  pattern = [encoding.layer_pattern[i % len(encoding.layer_pattern)] for i in range(n_layers)]
  export = lambda letter: encoding_to_hf(encoding.layer_encoding(letter), max_position_embeddings=0)
  if "N" not in kinds:
    inverse = {v: k for k, v in HF_LAYER_TYPES.items()}
    return {"rope_parameters": {inverse[k]: export(k) for k in ("L", "G")},
            "layer_types": [inverse[letter] for letter in pattern]}
  if "L" in kinds:
    raise HFConfigError("per_layer: a pattern with both 'L' and 'N' layers has no Hugging Face form "
                        "(Gemma 3 has no NoPE layers, Llama 4 no local base)")
  return {"rope_parameters": export("G"), "no_rope_layers": [int(letter == "G") for letter in pattern],
          "attn_temperature_tuning": encoding.attn_temperature_tuning, "floor_scale": encoding.floor_scale,
          "attn_scale": encoding.attn_scale}


def encoding_from_hf(config: dict[str, Any]) -> pe.Encoding:
  """config.json dictionary -> the rope_lab encoding transformers would apply."""
  if _is_per_layer(config):
    return per_layer_from_hf(config)
  params, where = rope_parameters(config)
  rope_type = params["rope_type"]
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise HFConfigError(
        f"{where}: field 'rope_type' is {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
    )
  max_position = config.get("max_position_embeddings")
  common = {
      "base": float(_field(params, "rope_theta", where)),
      "rotary_fraction": float(params.get("partial_rotary_factor") or 1.0),
      "layout": "half",  # every supported architecture uses rotate-half
  }
  original = params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
  if rope_type in ("yarn", "longrope", "llama3"):
    original = original or max_position
    if original is None:
      raise HFConfigError(f"{where}: field 'original_max_position_embeddings' (or max_position_embeddings) is required")
  try:
    if rope_type == "default":
      return pe.make("rope", **common)
    if rope_type == "proportional":  # partial_rotary_factor is the proportion of pairs that rotate
      return pe.make("proportional", base=common["base"], rope_proportion=common["rotary_fraction"],
                     factor=float(params.get("factor") or 1.0), layout="half")
    if rope_type == "linear":
      return pe.make("pi", factor=float(_field(params, "factor", where)), **common)
    if rope_type == "dynamic":
      if max_position is None:
        raise HFConfigError("config: field 'max_position_embeddings' is required for rope_type 'dynamic'")
      return pe.make("dynamic_ntk", factor=float(_field(params, "factor", where)),
                     original_max_position_embeddings=int(max_position), **common)
    factor = params.get("factor")
    if factor is None and rope_type in ("yarn", "longrope"):
      if max_position is None:
        raise HFConfigError(f"{where}: field 'factor' is required when max_position_embeddings is absent")
      factor = max_position / original
    if rope_type == "yarn":
      return pe.make(
          "yarn", factor=float(factor), original_max_position_embeddings=int(original),
          beta_fast=float(params.get("beta_fast") or 32.0), beta_slow=float(params.get("beta_slow") or 1.0),
          truncate=bool(params.get("truncate", True)), attention_factor=params.get("attention_factor"),
          mscale=params.get("mscale"), mscale_all_dim=params.get("mscale_all_dim"), **common)
    if rope_type == "longrope":
      for key in ("short_factor", "long_factor"):
        if not isinstance(params.get(key), (list, tuple)):
          raise HFConfigError(f"{where}: field {key!r} must be a list of numbers, got {params.get(key)!r}")
      return pe.make(
          "longrope", short_factor=params["short_factor"], long_factor=params["long_factor"],
          original_max_position_embeddings=int(original), factor=float(factor),
          attention_factor=params.get("attention_factor"), require_monotone=False, **common)
    return pe.make(
        "llama3", factor=float(_field(params, "factor", where)),
        low_freq_factor=float(_field(params, "low_freq_factor", where)),
        high_freq_factor=float(_field(params, "high_freq_factor", where)),
        original_max_position_embeddings=int(original), **common)
  except pe.ConfigError as e:
    raise HFConfigError(f"{where}: {e}") from None


def encoding_to_hf(encoding: pe.Encoding, *, max_position_embeddings: int) -> dict[str, Any]:
  """rope_lab encoding -> ``rope_parameters`` dictionary that transformers reads back identically."""
  enc = encoding
  if enc.name == "per_layer":
    raise HFConfigError("per_layer: its Hugging Face form spans config fields; use per_layer_to_hf(encoding, "
                        "n_layers=...)")
  if enc.name not in ENCODINGS_TO_HF:
    raise HFConfigError(f"encoding {enc.name!r} has no Hugging Face rope_type; supported: "
                        f"{', '.join(ENCODINGS_TO_HF)}")
  if getattr(enc, "layout", "half") != "half":
    raise HFConfigError(f"{enc.name}: layout {enc.layout!r} has no Hugging Face equivalent (rotate-half only)")
  out: dict[str, Any] = {"rope_theta": enc.base}
  if enc.rotary_fraction != 1.0:
    out["partial_rotary_factor"] = enc.rotary_fraction
  if enc.name == "proportional":
    out.update(rope_type="proportional", partial_rotary_factor=enc.rope_proportion, factor=enc.factor)
  elif enc.name == "rope":
    out["rope_type"] = "default"
  elif enc.name == "pi":
    out.update(rope_type="linear", factor=enc.factor)
  elif enc.name == "dynamic_ntk":
    if enc.original_max_position_embeddings != max_position_embeddings:
      raise HFConfigError("dynamic_ntk: transformers uses max_position_embeddings as the original length; "
                          f"set max_position_embeddings={enc.original_max_position_embeddings}")
    out.update(rope_type="dynamic", factor=enc.factor)
  elif enc.name == "yarn":
    out.update(rope_type="yarn", factor=enc.factor, beta_fast=enc.beta_fast, beta_slow=enc.beta_slow,
               truncate=enc.truncate, original_max_position_embeddings=enc.original_max_position_embeddings)
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
      if getattr(enc, key) is not None:
        out[key] = getattr(enc, key)
  elif enc.name == "longrope":
    if enc.n_hat:
      raise HFConfigError("longrope: n_hat > 0 has no Hugging Face equivalent")
    out.update(rope_type="longrope", short_factor=list(enc.short_factor), long_factor=list(enc.long_factor),
               original_max_position_embeddings=enc.original_max_position_embeddings,
               factor=enc.extension_ratio() or 1.0)
    if enc.attention_factor is not None:
      out["attention_factor"] = enc.attention_factor
  else:  # llama3
    out.update(rope_type="llama3", factor=enc.factor, low_freq_factor=enc.low_freq_factor,
               high_freq_factor=enc.high_freq_factor,
               original_max_position_embeddings=enc.original_max_position_embeddings)
  return out
