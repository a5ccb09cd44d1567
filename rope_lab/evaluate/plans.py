"""Encoding plans: which encoding to apply to a checkpoint at each evaluation length.

A plan is a stable id, a display label and an encoding spec (``pe.from_dict`` form). A parameter whose value is
the string ``"matched"`` is set, at each evaluation length L, to the length ratio
max(1, L / L_train) (``"matched_positions"``: the ratio of the largest positions,
max(1, (L - 1) / (L_train - 1)), which maps the last position exactly onto the last
trained one, as interpolating a learned table needs): ``{"name": "pi", "factor": "matched"}`` is Position Interpolation
rescaled for every window length (the Giraffe grid's "evaluation scale"). Every other
parameter is fixed. The resolved spec of each measurement is what results.jsonl records.

Ids (``"rope"``, ``"pi_matched"``, ``"yarn_s4"``) are what rows are joined by; labels
(``"RoPE"``, ``"PI s=L/L0"``, ``"YaRN s=4"``) are only shown. Both are defined here, once
per plan; :func:`plan_id_of_label` maps the labels of rows written before rows carried ids.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from rope_lab import pe
from rope_lab.errors import ConfigError

MATCHED = "matched"
MATCHED_POSITIONS = "matched_positions"

# Ids of the plans other code refers to by name (the scaled ones come from scaled_id).
TRAINED = "trained"  # the run's own encoding
ROPE = "rope"
PI_MATCHED = "pi_matched"  # PI with s = L / L0 at every length
DYNAMIC_NTK = "dynamic_ntk"
DYNAMIC_YARN = "dynamic_yarn"
XPOS = "xpos"


def scaled_id(method: str, scale: float) -> str:
  """The id of a static method set for scale s: ('yarn', 4.0) -> 'yarn_s4', (pi, 2.5) -> 'pi_s2.5'."""
  return f"{method}_s{scale:g}"


@dataclasses.dataclass(frozen=True)
class EncodingPlan:
  label: str  # for display only
  spec: tuple[tuple[str, Any], ...]  # sorted (name, value) pairs, hashable
  id: str = ""  # the stable join key; "" means slug(label)

  def __post_init__(self):
    if not self.id:
      object.__setattr__(self, "id", slug(self.label))

  @classmethod
  def of(cls, label: str, spec: dict[str, Any], plan_id: str = "") -> "EncodingPlan":
    if "name" not in spec:
      raise ConfigError(f"encoding plan {label!r}: spec needs a 'name', got {spec}")
    plan = cls(label=label, spec=tuple(sorted(spec.items())), id=plan_id)
    plan.encoding(1, 1)  # validates the parameters now rather than mid-study
    return plan

  @property
  def name(self) -> str:
    return dict(self.spec)["name"]

  @property
  def is_matched(self) -> bool:
    return any(v in (MATCHED, MATCHED_POSITIONS) for _, v in self.spec)

  def resolve(self, length: int, train_length: int) -> dict[str, Any]:
    """The concrete spec at evaluation length ``length`` for a model trained at ``train_length``."""
    ratios = {MATCHED: max(1.0, length / train_length),
              MATCHED_POSITIONS: max(1.0, (length - 1) / max(train_length - 1, 1))}
    return {k: ratios.get(v, v) if isinstance(v, str) else v for k, v in self.spec}

  def encoding(self, length: int, train_length: int) -> pe.Encoding:
    return pe.from_dict(self.resolve(length, train_length))


def plan_from_json(text: str) -> EncodingPlan:
  """``'{"name": "pi", "factor": 4}'``, optionally with ``"label"`` (default: a summary) and ``"id"``
  (default: the label as a slug) fields."""
  try:
    spec = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"--encoding={text!r} is not valid JSON ({e}); give an object such as "
                      f"'{{\"name\": \"pi\", \"factor\": 4}}'") from None
  if not isinstance(spec, dict):
    raise ConfigError(f"an encoding spec must be a JSON object, got {text!r}")
  plan_id = spec.pop("id", None) or ""
  label = spec.pop("label", None) or describe(spec)
  return EncodingPlan.of(label, spec, plan_id)


def describe(spec: dict[str, Any]) -> str:
  """A short label: the method and its scale parameter, e.g. 'pi s=4' or 'yarn s=L/L0'."""
  scale_keys = ("factor", "alpha", "extension_factor")
  parts = [spec["name"]]
  if spec.get("extension"):
    parts.append(spec["extension"])
  for key in scale_keys:
    if key in spec:
      value = spec[key]
      parts.append(f"s={value:g}" if not isinstance(value, str) else "s=L/L0")
      break
  return " ".join(parts)


def slug(label: str) -> str:
  """A label as a file-name part: 'PI s=L/L0' -> 'pi_s_l_l0'."""
  return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def rope_family_plans(train_length: int, *, base: float, scale: float) -> list[EncodingPlan]:
  """The zero-shot comparison on a RoPE checkpoint trained at ``train_length``.

  Static methods are set for the target scale ``scale`` (the fine-tuning scale); the
  dynamic ones follow the window length by construction; PI with s = L/L0 is the
  length-matched reference. Every other parameter is the method's published default,
  except the rotary base, which must be the checkpoint's.
  """
  orig = {"original_max_position_embeddings": train_length}
  s = float(scale)
  return [
      EncodingPlan.of("RoPE", {"name": "rope", "base": base}, ROPE),
      EncodingPlan.of(f"PI s={s:g}", {"name": "pi", "base": base, "factor": s}, scaled_id("pi", s)),
      EncodingPlan.of(f"NTK s={s:g}", {"name": "ntk", "base": base, "alpha": s}, scaled_id("ntk", s)),
      EncodingPlan.of(f"YaRN s={s:g}", {"name": "yarn", "base": base, "factor": s, **orig}, scaled_id("yarn", s)),
      EncodingPlan.of(f"Llama3 s={s:g}", {"name": "llama3", "base": base, "factor": s, **orig},
                      scaled_id("llama3", s)),
      EncodingPlan.of("Power", {"name": "power", "base": base, "power": 0.5}, "power"),
      EncodingPlan.of("Truncated", {"name": "truncated", "base": base,
                                    "cutoff_wavelength": float(train_length)}, "truncated"),
      # factor 1: alpha = L / L0 exactly (transformers' "dynamic" formula with factor s
      # over-scales to alpha = s L / L0 - (s - 1)).
      EncodingPlan.of("Dynamic NTK", {"name": "dynamic_ntk", "base": base, "factor": 1.0, **orig}, DYNAMIC_NTK),
      EncodingPlan.of("Dynamic YaRN", {"name": "dynamic_yarn", "base": base, **orig}, DYNAMIC_YARN),
      EncodingPlan.of("PI s=L/L0", {"name": "pi", "base": base, "factor": MATCHED}, PI_MATCHED),
  ]


def ape_plans(train_length: int, trained: dict) -> list[EncodingPlan]:
  """LongEmbed's training-free extensions of an APE checkpoint trained at ``train_length`` with the
  absolute encoding ``trained`` (a ``pe.to_dict``: learned or sinusoidal, its table parameters kept)."""
  common = {k: v for k, v in trained.items()
            if k not in ("extension", "extension_factor", "extension_mode", "original_max_position_embeddings")}
  orig = {"original_max_position_embeddings": train_length}
  return [
      EncodingPlan.of("APE PCW", {**common, "extension": "pcw", **orig}, "ape_pcw"),
      EncodingPlan.of("APE grouped", {**common, "extension": "grouped", **orig},  # ceil(L / L0) per input
                      "ape_grouped"),
      EncodingPlan.of("APE recurrent", {**common, "extension": "recurrent", **orig}, "ape_recurrent"),
      EncodingPlan.of("APE interpolate", {**common, "extension": "interpolate", **orig,
                                          "extension_factor": MATCHED_POSITIONS}, "ape_interpolate"),
  ]


# Labels of the plans above in rows written before rows carried ids.
_LABEL_IDS = {"RoPE": ROPE, "PI s=L/L0": PI_MATCHED, "Dynamic NTK": DYNAMIC_NTK, "Dynamic YaRN": DYNAMIC_YARN,
              "Power": "power", "Truncated": "truncated", "trained": TRAINED, "xPos": XPOS,
              "APE PCW": "ape_pcw", "APE grouped": "ape_grouped", "APE recurrent": "ape_recurrent",
              "APE interpolate": "ape_interpolate"}
_SCALED_LABEL = re.compile(r"^(PI|NTK|YaRN|Llama3) s=([0-9.eE+-]+)$")


def plan_id_of_label(label: str) -> str:
  """The id of the plan a label names (for rows without a plan_id); other labels: slug(label)."""
  if label in _LABEL_IDS:
    return _LABEL_IDS[label]
  scaled = _SCALED_LABEL.match(label)
  if scaled:
    return scaled_id(scaled.group(1).lower(), float(scaled.group(2)))
  return slug(label)
