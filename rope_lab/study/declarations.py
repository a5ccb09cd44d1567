"""The study's declared training runs: pretraining variants and fine-tunes, each one string.

An entry is the real-model study's method format (rope_lab/zero_shot/config.py), followed
by the run's training or data overrides, each after a ``|``::

  label=encoding[:param=value...] [| field=value ...]

  "pi=pi"                                                PI; factor and base filled in
  "truncated=truncated:cutoff_wavelength=128"            Giraffe's truncated basis
  "pose=pi | seq_len=0.25 | pose_target_length=1"        PoSE: short rows spanning the long window
  "icp=rope | data.packing=concat | data.ordering=in_context"

``seeds=N`` trains the run for the first N of the study's seeds only (default: every seed
for a fine-tune, ``variant_seeds`` for a variant), for secondary claims that need fewer.
Fields: a TrainConfig field by name (or ``train.<name>``), a DataConfig field as
``data.<name>``, a ModelConfig field as ``model.<name>``. Length fields (``seq_len``,
``pose_target_length``) are multiples of the run's own length: the fine-tune length
(finetune_scale x training length) in a fine-tune, the training length in a variant.
Encoding parameters an entry leaves out are filled from the base model wherever the
encoding takes them: ``base`` (its rotary base), ``original_max_position_embeddings`` and
``max_length`` (the training length), and in a fine-tune ``factor`` (the fine-tune's scale).
So what a run is comes from its declaration; the study never asks for a method by name.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import TYPE_CHECKING

from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab.data.config import DataConfig
from rope_lab.errors import ConfigError

if TYPE_CHECKING:  # the real-model study's Method (label, encoding name, parameters); imported on use
  from rope_lab.zero_shot.config import Method

SECTIONS = {"train": config_lib.TrainConfig, "data": DataConfig, "model": config_lib.ModelConfig}
LENGTH_FIELDS = ("seq_len", "pose_target_length")  # multiples of the run's length
LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_]*$")  # a label is part of run directory names


@dataclasses.dataclass(frozen=True)
class RunDeclaration:
  """One declared run: its label, its encoding (unfilled) and its overrides by section."""

  spec: str  # the text it was parsed from (what study_config.json stores)
  method: Method
  overrides: tuple[tuple[str, str, object], ...] = ()  # (section, field, value)
  seeds: int | None = None  # trained for the first this-many seeds (None: the study's default)

  def seeds_of(self, study_seeds, default: int | None = None) -> tuple:
    """The study seeds this run is trained for."""
    count = self.seeds if self.seeds is not None else default
    return tuple(study_seeds) if count is None else tuple(study_seeds)[:count]

  @property
  def label(self) -> str:
    return self.method.label

  def encoding_params(self, defaults: dict) -> dict:
    """The encoding's parameters: the entry's, and ``defaults`` for the ones it leaves out."""
    fields = {f.name for f in dataclasses.fields(pe.REGISTRY[self.method.name])}
    params = {k: v for k, v in defaults.items() if k in fields}
    params.update(dict(self.method.params))
    return params

  def section_values(self, length: int) -> dict[str, dict]:
    """Overrides per section, length fields resolved as multiples of ``length`` tokens."""
    out: dict[str, dict] = {name: {} for name in SECTIONS}
    for section, name, value in self.overrides:
      if section == "train" and name in LENGTH_FIELDS:
        value = int(round(float(value) * length))
      out[section][name] = value
    return out


def _value(text: str):
  text = text.strip()
  if text[:1] in "-0123456789[{" or text in ("true", "false", "null"):
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value
  return text


def parse_run(spec: str, where: str) -> RunDeclaration:
  """'label=encoding:param=value | field=value' -> RunDeclaration; errors name ``where`` and the entry."""
  from rope_lab.zero_shot.config import Method  # pylint: disable=g-import-not-at-top  (a cycle via zero_shot.report)

  def fail(problem: str):
    raise ConfigError(f"{where}: entry {spec!r}: {problem}")

  if not isinstance(spec, str):
    fail("must be a string 'label=encoding[:param=value...] [| field=value ...]'")
  head, *overrides = [part.strip() for part in spec.split("|")]
  label, has_label, rest = head.partition("=")
  if not has_label or ":" in label:  # 'encoding[:param=value...]' alone: labelled by its encoding
    label, rest = head.split(":", 1)[0], head
  if not LABEL.match(label):
    fail(f"label {label!r} must be letters, digits and '_' (it names run directories)")
  name, *pairs = rest.split(":")
  if name not in pe.REGISTRY:
    fail(f"encoding {name!r} is not registered; registered: {', '.join(sorted(pe.REGISTRY))}")
  fields = {f.name for f in dataclasses.fields(pe.REGISTRY[name])}
  params = []
  for pair in pairs:
    key, has_value, text = pair.partition("=")
    if not has_value or not text.strip():
      fail(f"encoding parameter {pair!r} needs a value (name=value)")
    if key not in fields:
      fail(f"encoding {name!r} has no parameter {key!r}")
    params.append((key, _value(text)))
  parsed = []
  seeds = None
  for item in overrides:
    key, has_value, text = item.partition("=")
    key = key.strip()
    if not has_value or not text.strip():
      fail(f"override {item!r} needs a value (field=value)")
    if key == "seeds":
      seeds = _value(text)
      if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        fail(f"seeds={text.strip()!r} must be an int >= 1 (the first this-many study seeds)")
      continue
    section, _, field = key.rpartition(".")
    section = section or "train"
    if section not in SECTIONS:
      fail(f"override {key!r}: section {section!r} is not one of {', '.join(SECTIONS)}")
    known = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if field not in known or (section == "train" and field in ("seed", "init_from")):
      fail(f"override {key!r}: {SECTIONS[section].__name__} has no field {field!r} that a run may set")
    parsed.append((section, field, _value(text)))
  return RunDeclaration(spec=spec, method=Method(label=label, name=name, params=tuple(params)),
                        overrides=tuple(parsed), seeds=seeds)


def parse_runs(entries, where: str) -> tuple[RunDeclaration, ...]:
  """Every entry parsed (entries already parsed are kept); labels must be distinct."""
  runs = tuple(e if isinstance(e, RunDeclaration) else parse_run(e, f"{where}[{i}]")
               for i, e in enumerate(entries))
  labels = [r.label for r in runs]
  duplicated = sorted({label for label in labels if labels.count(label) > 1})
  if duplicated:
    raise ConfigError(f"{where}: labels must be distinct; repeated: {duplicated}")
  return runs


def declared_experiment(exp: config_lib.ExperimentConfig, run: RunDeclaration, *, length: int,
                        train_length: int, defaults: dict, where: str,
                        **train_changes) -> config_lib.ExperimentConfig:
  """``exp`` with the run's encoding and overrides (after ``train_changes``); rows per step keep
  the base run's tokens per step unless the entry sets global_batch_size."""
  values = run.section_values(length)
  train = {"seq_len": length, **train_changes, **values["train"]}
  if "global_batch_size" not in values["train"]:
    train["global_batch_size"] = max(1, exp.train.global_batch_size * train_length // train["seq_len"])
  try:
    return dataclasses.replace(
        exp, encoding=pe.make(run.method.name, **run.encoding_params(defaults)),
        train=dataclasses.replace(exp.train, **train), data=dataclasses.replace(exp.data, **values["data"]),
        model=dataclasses.replace(exp.model, **values["model"]))
  except (ConfigError, ValueError, TypeError) as e:
    raise ConfigError(f"{where}: entry {run.spec!r}: {e}") from e
