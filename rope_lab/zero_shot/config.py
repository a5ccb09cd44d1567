"""ZeroShotConfig: what the real-model study measures, as one frozen value checked once."""

from __future__ import annotations

import dataclasses
import json
import os

from rope_lab import pe
from rope_lab import results as results_lib
from rope_lab.errors import ConfigError, check

CONFIG_FILE = "zero_shot_config.json"
DOCUMENT_SOURCES = ("essays", "kjv", "stdlib")


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the study: a label and an encoding (its parameters, the model's filled in)."""

  label: str
  name: str
  params: tuple[tuple[str, object], ...] = ()

  def encoding(self, model_defaults: dict) -> pe.Encoding:
    """The encoding, with the model's own rope base and training length wherever the method
    takes them and the row does not set them (so every row starts from the model as trained)."""
    fields = {f.name for f in dataclasses.fields(pe.REGISTRY[self.name])}
    params = {k: v for k, v in model_defaults.items() if k in fields}
    params.update(dict(self.params))
    return pe.make(self.name, **params)


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
  """The zero-shot context-extension study on a pretrained model (``configs/study_real.py``)."""

  model: str = "smollm2"  # 'smollm2' (the asset store's GGUF) or a path to a llama GGUF file
  layers: int = 0  # 0: every layer; n: only the first n (a pipeline check, not a result)
  methods: tuple[Method, ...] = ()
  # Perplexity: one window of ``max_length`` tokens from the start of each document; every
  # length of ``lengths`` is read from it (causal attention: tokens before L never see later
  # ones), except for encodings whose hooks at L differ from those at max_length on the first
  # L tokens (Dynamic NTK / YaRN), which get a forward pass of L tokens of their own.
  documents: tuple[str, ...] = ("essays",)
  lengths: tuple[int, ...] = (2048, 4096, 8192, 12288, 16384)
  block: int = 256  # tokens per stored loss block: the bootstrap's unit
  # Attention mass by distance of the last ``attention_queries`` queries before each of these
  # lengths (a subset of ``lengths``), captured during the perplexity pass of the first document.
  attention_lengths: tuple[int, ...] = (8192, 16384)
  attention_queries: int = 64
  # Passkey retrieval and needle-in-a-haystack (greedy generation), for these method labels.
  retrieval_methods: tuple[str, ...] = ()
  passkey_lengths: tuple[int, ...] = (4096, 16384)
  passkey_depths: tuple[float, ...] = (0.25, 0.75)
  passkey_samples: int = 1
  needle_lengths: tuple[int, ...] = (16384,)
  needle_depths: tuple[float, ...] = (0.5,)
  generation_cache: str = "rerotate"  # see rope_lab.model.generate: exact recomputes per step under dynamic methods
  heatmap_length: int = 16384  # analytic similarity maps with the model's mean q/k, up to here
  seed: int = 0
  resamples: int = 2000  # bootstrap draws per interval

  def __post_init__(self):
    check(bool(self.methods), "study_real: methods", "at least one method", self.methods)
    labels = [m.label for m in self.methods]
    check(len(set(labels)) == len(labels), "study_real: methods", "distinct labels", labels)
    check(labels[0] == "rope", "study_real: methods", "'rope' (the model as trained) first", labels[0])
    for m in self.methods:
      check(m.name in pe.REGISTRY, f"study_real: method {m.label!r}", f"a registered encoding {sorted(pe.REGISTRY)}",
            m.name)
    for label in self.retrieval_methods:
      check(label in labels, "study_real: retrieval_methods", f"labels of methods {labels}", label)
    for doc in self.documents:
      check(doc.split(":")[0] in DOCUMENT_SOURCES, "study_real: documents",
            f"one of {DOCUMENT_SOURCES} (kjv:<book id> and stdlib:<file> pick one)", doc)
    check(bool(self.lengths) and list(self.lengths) == sorted(set(self.lengths)), "study_real: lengths",
          "increasing lengths", self.lengths)
    check(self.block >= 1 and all(n % self.block == 0 for n in self.lengths), "study_real: block",
          f"a divisor of every length {self.lengths}", self.block)
    check(set(self.attention_lengths) <= set(self.lengths), "study_real: attention_lengths",
          f"a subset of lengths {self.lengths}", self.attention_lengths)
    check(1 <= self.attention_queries <= min(self.lengths), "study_real: attention_queries",
          f"in [1, {min(self.lengths)}]", self.attention_queries)
    check(all(0.0 <= d <= 1.0 for d in self.passkey_depths + self.needle_depths), "study_real: depths",
          "fractions in [0, 1]", self.passkey_depths + self.needle_depths)
    check(self.passkey_samples >= 1, "study_real: passkey_samples", ">= 1", self.passkey_samples)
    check(self.generation_cache in ("exact", "rerotate", "frozen"), "study_real: generation_cache",
          "exact, rerotate or frozen", self.generation_cache)

  @property
  def max_length(self) -> int:
    return self.lengths[-1]

  def method(self, label: str) -> Method:
    return next(m for m in self.methods if m.label == label)


def parse_method(spec: str) -> Method:
  """'label=name:param=value:param=value' (or 'name' alone: label = name) -> Method."""
  label, has_label, rest = spec.partition("=")
  if not has_label or ":" in label:
    label, rest = spec.split(":", 1)[0], spec
  name, *pairs = rest.split(":")
  params = []
  for pair in pairs:
    key, has_value, text = pair.partition("=")
    if not has_value:
      raise ConfigError(f"study_real: method {spec!r}: parameter {pair!r} needs a value (name=value)")
    params.append((key, json.loads(text) if text[:1] in "-0123456789[tfn" else text))
  return Method(label=label, name=name, params=tuple(params))


def config_from_dict(config) -> ZeroShotConfig:
  """The frozen config from ``configs/study_real.py``'s ConfigDict; unknown fields are errors."""
  values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  values.pop("kind", None)
  known = {f.name for f in dataclasses.fields(ZeroShotConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(f"study_real: unknown config fields {unknown}; valid: {sorted(known)}")
  values["methods"] = tuple(parse_method(s) for s in values.get("methods", ()))
  for name in ("documents", "lengths", "attention_lengths", "retrieval_methods", "passkey_lengths", "passkey_depths",
               "needle_lengths", "needle_depths"):
    if name in values:
      values[name] = tuple(values[name])
  return ZeroShotConfig(**values)


def save(cfg: ZeroShotConfig, workdir: str) -> str:
  """Writes the config next to the results (the study resumes only under the same config)."""
  path = os.path.join(workdir, CONFIG_FILE)
  text = results_lib.canonical_json(cfg)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      if f.read().strip() != text:
        raise ConfigError(f"{path} holds another study's config; use a new --workdir (or delete it to start over)")
    return path
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text + "\n")
  return path
