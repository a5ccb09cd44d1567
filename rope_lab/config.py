"""Typed experiment configuration: the one module that turns a ConfigDict into frozen values.

A config file builds an ``ml_collections.ConfigDict`` with four parts:

* top-level fields: the :class:`TrainConfig` fields (steps, batch, lr schedule, mesh, ...);
* ``config.model``: the ``rope_lab.model.skeleton.ModelConfig`` fields;
* ``config.data``: the ``rope_lab.data.DataConfig`` fields;
* ``config.pe``: the positional encoding: ``name`` picks the method and the other
  entries are that method's parameters, nothing else (configs/common.py's ``pe_config``
  builds it for config files, :func:`pe_config_dict` for code).

:func:`experiment_from_config_dict` checks every field against the dataclass it belongs
to (unknown names and wrong types are errors that name the field) and builds the frozen
values; each dataclass validates its own ranges in ``__post_init__``. Nothing here reads
flags, and nothing downstream sees a ConfigDict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import ml_collections
from ml_collections import config_dict

from rope_lab import pe

from rope_lab.model import lora
from rope_lab.data import DataConfig
from rope_lab.model.skeleton import ModelConfig
from rope_lab.running.sharding import DEFAULT_RULES, MESH_AXES

LR_SCHEDULES = ("cosine", "constant")
# Schemes init_from understands: a local run directory or one on a remote file system
# that orbax (etils.epath) opens, "hf:<dir>", a local Hugging Face model directory, or
# "gguf:<file>", a local llama-architecture GGUF file.
INIT_FROM_SCHEMES = ("gs://", "hf:", "gguf:")
HF_SCHEME = "hf:"
GGUF_SCHEME = "gguf:"
CHECKPOINT_SCHEMES = (HF_SCHEME, GGUF_SCHEME)  # pretrained checkpoints, whose files fix the architecture


from rope_lab.errors import ConfigError, check  # noqa: E402  (one class for every config error)
from rope_lab.typed_values import coerce  # noqa: E402  (the one coercer)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to train: schedule, batch, checkpoints, evaluation and the device mesh.

  Attributes:
    seq_len: tokens per training row.
    global_batch_size: rows per optimizer step, summed over all processes.
    steps: optimizer steps of the run (a resumed run continues up to this number).
    seed: seeds parameter init, the data order and per-step randomness.
    learning_rate: peak learning rate, reached after ``warmup_steps``.
    lr_schedule: ``cosine`` (decay to ``min_lr_ratio * learning_rate`` at ``steps``) or
      ``constant`` (stay at the peak; the fine-tuning protocols of PI and YaRN).
    warmup_steps: linear warmup from 0.
    min_lr_ratio: final learning rate of the cosine schedule, as a fraction of the peak.
    weight_decay: AdamW decoupled weight decay (not applied to norms and biases).
    adam_b1, adam_b2, adam_eps: AdamW moments.
    grad_clip_norm: clip the global gradient norm to this value; 0 disables clipping.
    grad_accum_steps: split each global batch into this many sequential micro-batches.
    log_every: steps between metric lines (and host synchronisations).
    eval_every: steps between validation-loss evaluations; 0 disables them.
    eval_batches: batches of held-out data per evaluation, each of
      ``global_batch_size // grad_accum_steps`` rows (one micro-batch).
    eval_split: the data split evaluated.
    checkpoint_every: steps between checkpoints; 0 saves only at the end (and on SIGTERM).
    keep_checkpoints: how many of the newest checkpoints to keep.
    async_checkpointing: write checkpoints in a background thread.
    init_from: start from the parameters of another run (its work directory), of a
      Hugging Face Llama/Mistral/Qwen2 directory (``hf:<dir>``) or of a llama GGUF file
      (``gguf:<file>``, dequantized to float32); a checkpoint's config.json or metadata then
      fixes config.model's architecture fields. The optimizer, step and data position start
      fresh. None trains from scratch.
    init_from_layers: with an ``hf:``/``gguf:`` init_from, keep only its first N decoder
      blocks (with the embedding, final norm and head): a quick model for tests and
      pipeline checks, not the checkpoint's function. 0: every block.
    mesh_shape: device counts along ``MESH_AXES`` = (data, fsdp, tensor, sequence), or
      three sizes (data, fsdp, tensor) without a sequence split; one entry may be -1 (all
      remaining devices).
    logical_rules: (logical axis name, mesh axis or axes or None) pairs, first match wins.
    tensorboard: also write TensorBoard event files next to metrics.jsonl.
    pose_target_length: PoSE (``rope_lab.data.position_skips``): train rows of ``seq_len``
      tokens at positions skipped to span this length N (each packed segment: a first
      chunk at its own positions, the rest shifted by a random skip), so the fine-tune
      covers distances up to N - 1; the encoding is resolved for N. 0: plain positions.
    lora_rank: LongLoRA / LoRA (``rope_lab.model.lora``): rank r of the adapters on the
      ``lora_targets`` projections, whose base kernels (and every parameter not named by
      ``lora_trainable``) stay frozen; checkpoints hold the merged weights. 0: train all.
    lora_alpha: the adapters' output is scaled by lora_alpha / lora_rank.
    lora_targets: Dense modules given adapters, from ``rope_lab.model.lora.TARGETS``.
    lora_trainable: parameters trained besides the adapters, from
      ``rope_lab.model.lora.TRAINABLE_EXTRAS`` (LongLoRA: embeddings and norms).
    s2_attn_group_fraction: shifted sparse attention (LongLoRA's S2-Attn) while training:
      groups of G = int(seq_len * fraction) tokens, half the heads shifted by G / 2;
      evaluation keeps full attention. The paper uses 1/4. 0: full attention.
  """

  seq_len: int = 128
  global_batch_size: int = 8
  steps: int = 1000
  seed: int = 0
  learning_rate: float = 1e-3
  lr_schedule: str = "cosine"
  warmup_steps: int = 100
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  adam_b1: float = 0.9
  adam_b2: float = 0.95
  adam_eps: float = 1e-8
  grad_clip_norm: float = 1.0
  grad_accum_steps: int = 1
  log_every: int = 10
  eval_every: int = 200
  eval_batches: int = 4
  eval_split: str = "validation"
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  init_from: str | None = None
  init_from_layers: int = 0
  mesh_shape: tuple[int, ...] = (-1, 1, 1)
  logical_rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = DEFAULT_RULES
  tensorboard: bool = True
  pose_target_length: int = 0
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("q", "k", "v", "o")
  lora_trainable: tuple[str, ...] = lora.TRAINABLE_EXTRAS
  s2_attn_group_fraction: float = 0.0

  @property
  def s2_attn_group_size(self) -> int:
    """G of shifted sparse attention in training rows; 0 when it is off."""
    return int(self.seq_len * self.s2_attn_group_fraction)

  def __post_init__(self):
    for name in ("seq_len", "global_batch_size", "steps", "grad_accum_steps", "log_every",
                 "keep_checkpoints"):
      check(getattr(self, name) >= 1, f"config.{name}", "an int >= 1", getattr(self, name))
    for name in ("warmup_steps", "eval_every", "eval_batches", "checkpoint_every", "seed"):
      check(getattr(self, name) >= 0, f"config.{name}", "an int >= 0", getattr(self, name))
    check(self.learning_rate > 0, "config.learning_rate", "> 0", self.learning_rate)
    check(self.pose_target_length == 0 or self.pose_target_length >= self.seq_len,
          "config.pose_target_length", f"0 (off) or >= seq_len={self.seq_len}", self.pose_target_length)
    check(self.lr_schedule in LR_SCHEDULES, "config.lr_schedule", f"one of {LR_SCHEDULES}",
          self.lr_schedule)
    check(0 <= self.min_lr_ratio <= 1, "config.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
    check(self.weight_decay >= 0, "config.weight_decay", ">= 0", self.weight_decay)
    check(0 <= self.adam_b1 < 1, "config.adam_b1", "in [0, 1)", self.adam_b1)
    check(0 <= self.adam_b2 < 1, "config.adam_b2", "in [0, 1)", self.adam_b2)
    check(self.adam_eps > 0, "config.adam_eps", "> 0", self.adam_eps)
    check(self.grad_clip_norm >= 0, "config.grad_clip_norm", ">= 0 (0 disables)", self.grad_clip_norm)
    check(self.global_batch_size % self.grad_accum_steps == 0, "config.grad_accum_steps",
          f"a divisor of global_batch_size={self.global_batch_size}", self.grad_accum_steps)
    check(self.eval_every == 0 or self.eval_batches >= 1, "config.eval_batches",
          ">= 1 when eval_every > 0", self.eval_batches)
    check(len(self.mesh_shape) in (len(MESH_AXES) - 1, len(MESH_AXES))
          and all(n == -1 or n >= 1 for n in self.mesh_shape)
          and list(self.mesh_shape).count(-1) <= 1,
          "config.mesh_shape", f"{len(MESH_AXES) - 1} sizes for {MESH_AXES[:-1]} or {len(MESH_AXES)} for "
          f"{MESH_AXES}, each >= 1 or one -1",
          self.mesh_shape)
    known_axes = set(MESH_AXES)
    for logical, mesh_axes in self.logical_rules:
      axes = (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())
      check(set(axes) <= known_axes, "config.logical_rules",
            f"pairs mapping to mesh axes in {MESH_AXES} (rule for {logical!r})", mesh_axes)
    if self.init_from is not None:
      check_init_from(self.init_from)
    check(self.init_from_layers >= 0, "config.init_from_layers", "an int >= 0 (0: every block)",
          self.init_from_layers)
    check(self.lora_rank >= 0, "config.lora_rank", "an int >= 0 (0: no adapters)", self.lora_rank)
    check(self.lora_alpha > 0, "config.lora_alpha", "> 0", self.lora_alpha)
    check(len(self.lora_targets) >= 1 and set(self.lora_targets) <= set(lora.TARGETS)
          and len(set(self.lora_targets)) == len(self.lora_targets),
          "config.lora_targets", f"distinct names from {lora.TARGETS}", self.lora_targets)
    check(set(self.lora_trainable) <= set(lora.TRAINABLE_EXTRAS)
          and len(set(self.lora_trainable)) == len(self.lora_trainable),
          "config.lora_trainable", f"distinct names from {lora.TRAINABLE_EXTRAS}", self.lora_trainable)
    group = self.s2_attn_group_size
    check(self.s2_attn_group_fraction == 0 or (0 < self.s2_attn_group_fraction <= 1 and group >= 2
                                               and self.seq_len % group == 0),
          "config.s2_attn_group_fraction",
          f"0 (off) or a fraction of seq_len={self.seq_len} giving a group G = int(seq_len * fraction) "
          f">= 2 that divides seq_len (the paper: 0.25)", self.s2_attn_group_fraction)


def check_init_from(path: str) -> None:
  """Raises a ValueError naming config.init_from for an empty path or an unknown scheme."""
  check(isinstance(path, str) and path.strip() != "", "config.init_from",
        "None or a run directory", path)
  scheme = path.split(":", 1)[0] if ":" in path else ""
  if scheme and not path.startswith(INIT_FROM_SCHEMES):
    raise ConfigError(
        f"config.init_from={path!r}: unknown scheme {scheme + ':'!r}; supported: a local run "
        f"directory, gs://<run dir>, hf:<Hugging Face model dir> or gguf:<file.gguf>")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything a training run needs, as frozen typed values."""

  model: ModelConfig
  data: DataConfig
  encoding: pe.Encoding
  train: TrainConfig

  def __post_init__(self):
    # LoRA's adapters attach to each layer's modules by name; a scan runs one unnamed block.
    check(not (self.model.scan_layers and self.train.lora_rank > 0), "config.model.scan_layers",
          f"False with config.lora_rank={self.train.lora_rank} > 0 (adapters attach to each named layer)",
          self.model.scan_layers)


# ----------------------------------------------------------------------------- conversion

_SECTIONS = ("model", "data", "pe")


def experiment_from_config_dict(config: ml_collections.ConfigDict) -> ExperimentConfig:
  """The boundary: a (locked) ConfigDict -> ExperimentConfig, or a ConfigError naming the field."""
  values = config.to_dict()
  missing = [name for name in _SECTIONS if name not in values]
  if missing:
    raise ConfigError(f"config needs the section(s) {missing}; it has {sorted(values)}")
  train_values = {k: v for k, v in values.items() if k not in _SECTIONS}
  train = dataclass_from_mapping(TrainConfig, train_values, "config")
  # With init_from=hf:<dir> the checkpoint's config.json fixes the architecture: the runner
  # reads it (rope_lab.training.loop.with_checkpoint_architecture); no file is read here.
  return ExperimentConfig(
      model=dataclass_from_mapping(ModelConfig, values["model"], "config.model"),
      data=dataclass_from_mapping(DataConfig, values["data"], "config.data"),
      encoding=encoding_from_mapping(values["pe"]),
      train=train,
  )


def dataclass_from_mapping(cls: type, values: Mapping[str, Any], where: str):
  """Builds ``cls(**values)`` after checking names and types against its annotations.

  None means "the dataclass default" for a field whose annotation does not admit None,
  which lets config files keep typed placeholders for optional overrides.
  """
  if not isinstance(values, Mapping):
    raise ConfigError(f"{where} must be a ConfigDict of {cls.__name__} fields, got {values!r}")
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                      f"{cls.__name__} has: {', '.join(fields)}")
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, value in values.items():
    hint = hints.get(name, Any)
    if value is None and not _admits_none(hint):
      continue
    kwargs[name] = coerce(value, hint, f"{where}.{name}")
  try:
    return cls(**kwargs)
  except (ValueError, TypeError) as e:
    if type(e) is ConfigError and str(e).startswith("config."):
      raise  # already names its field in full
    raise ConfigError(f"{where}: {e}") from e


def _admits_none(hint) -> bool:
  return hint is Any or (typing.get_origin(hint) in (Union, types.UnionType)
                         and type(None) in typing.get_args(hint))


def _base_type(hint) -> type:
  """``int | None`` -> int, ``tuple[float, ...]`` -> tuple: the type a placeholder holds."""
  if typing.get_origin(hint) in (Union, types.UnionType):
    (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
  origin = typing.get_origin(hint)
  return origin if origin is not None else hint


def pe_config_dict(name: str, **params) -> ml_collections.ConfigDict:
  """``config.pe`` for code that builds configs itself: ``name`` plus every parameter of
  that method with its default (typed None placeholders where there is none), as
  configs/common.py's ``pe_config`` builds it for config files."""
  if name not in pe.REGISTRY:
    raise ConfigError(f"config.pe.name must be one of {sorted(pe.REGISTRY)}, got {name!r}")
  cls = pe.REGISTRY[name]
  hints = typing.get_type_hints(cls)
  fields = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(params) - set(fields))
  if unknown:
    raise ConfigError(f"config.pe: encoding {name!r} has no parameter(s) {unknown}; "
                      f"its parameters: {', '.join(fields) or 'none'}")
  section = ml_collections.ConfigDict({"name": name})
  for field in dataclasses.fields(cls):
    default = params.get(field.name, field.default)
    section[field.name] = (config_dict.placeholder(_base_type(hints[field.name]))
                           if default is None else default)
  return section


def encoding_from_mapping(values: Mapping[str, Any]) -> pe.Encoding:
  """``config.pe`` as a dict (``name`` and that method's parameters) -> the frozen Encoding.

  Unset (None) parameters take the method's defaults; an unknown parameter, one of the
  wrong type or an out-of-range value is a ConfigError naming ``config.pe.<param>``.
  """
  if not isinstance(values, Mapping):
    raise ConfigError(f"config.pe must be a ConfigDict with a name and that encoding's "
                      f"parameters, got {values!r}")
  name = values.get("name")
  if name not in pe.REGISTRY:
    raise ConfigError(f"config.pe.name must be one of {sorted(pe.REGISTRY)}, got {name!r}")
  cls = pe.REGISTRY[name]
  params = {k: v for k, v in values.items() if k != "name"}
  accepted = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(params) - set(accepted))
  if unknown:
    raise ConfigError(f"config.pe: encoding {name!r} has no parameter(s) {', '.join(unknown)}; "
                      f"its parameters: {', '.join(accepted) or 'none'}")
  hints = typing.get_type_hints(cls)
  given = {k: coerce(v, hints[k], f"config.pe.{k}") for k, v in params.items() if v is not None}
  try:
    return pe.make(name, **given)
  except ValueError as e:
    raise ConfigError(f"config.pe ({name}): {e}") from e


def experiment_to_dict(exp: ExperimentConfig) -> dict[str, Any]:
  """The resolved values as JSON-ready dicts (saved as config.json in the work directory)."""
  def plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
  return {
      "model": plain(exp.model),
      "data": plain(exp.data),
      "pe": pe.to_dict(exp.encoding),
      "train": plain(exp.train),
  }
