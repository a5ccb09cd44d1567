"""The encoding interface: a frozen config per method, a registry, and the hooks value.

Every method is a frozen dataclass whose fields are its parameters. Its validation runs
in ``__post_init__`` so a bad value fails when the config is made, before anything is
computed. The model never asks which method it holds; it calls
``encoding.hooks(head_dim=..., n_heads=..., d_model=..., seq_len=...)`` and gets a
:class:`Hooks` pytree: arrays for every number (so switching between methods that differ
only in frequencies or scales does not recompile) and a few static fields that describe
structure (rotary dimension, pairing layout, which absolute table).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
from flax import struct

REGISTRY: dict[str, type["Encoding"]] = {}


def register(cls):
  """Class decorator: adds a method config to the registry under ``cls.name``."""
  if cls.name in REGISTRY:
    raise ValueError(f"encoding name {cls.name!r} registered twice")
  REGISTRY[cls.name] = cls
  return cls


from rope_lab import errors  # noqa: E402
from rope_lab.errors import ConfigError  # noqa: E402  (one class for every config error)
from rope_lab.typed_values import coerce  # noqa: E402  (the one coercer)
from rope_lab.pe import rotary  # noqa: E402
from rope_lab.pe.rotary import RotaryTables  # noqa: E402,F401  (the hooks' tables; defined beside their maths)


def check(condition: bool, method: str, field: str, valid: str, value: Any) -> None:
  """Raises ConfigError naming ``method.field``, the valid range and the bad value."""
  errors.check(condition, f"{method}: parameter {field!r}", valid, value)


# ----------------------------------------------------------------------------- hooks


@struct.dataclass
class PositionMap:
  """p -> ((p mod period) // group) * scale, plus window ids p // window.

  period 0 and window 0 mean "off"; group 1 and scale 1 are the identity. These cover
  LongEmbed's recurrent, grouped, interpolated and parallel-window positions with one
  formula, so the skeleton needs no per-method code.
  """

  period: jnp.ndarray  # int32 scalar
  group: jnp.ndarray  # int32 scalar
  scale: jnp.ndarray  # float32 scalar
  window: jnp.ndarray  # int32 scalar
  # Randomized positions: sorted random draws from [0, randomize_range) per packed segment,
  # in training (the step's rng) and, when randomize_at_evaluation, also without an rng
  # (a key from randomize_seed), as the reference evaluates.
  randomize_range: int = struct.field(pytree_node=False, default=0)
  randomize_at_evaluation: bool = struct.field(pytree_node=False, default=False)
  randomize_seed: int = struct.field(pytree_node=False, default=0)


@struct.dataclass
class XposScales:
  zeta: jnp.ndarray  # [P] per-pair base of the decay
  scale_base: jnp.ndarray  # scalar
  center: jnp.ndarray  # scalar: positions are shifted by -center before exponentiation


@struct.dataclass
class QueryScale:
  """q x max(1, offset + slope * ln(shift + floor((p + 1) / divisor))) at position p.

  One formula for the position-dependent query temperatures: LogN (Qwen) is offset 0,
  slope 1 / ln L, shift 0, divisor 1, i.e. log_L(p + 1) beyond L; Llama 4's
  attn_temperature_tuning is offset 1, slope attn_scale, shift 1, divisor floor_scale.
  Arrays, so switching between them does not recompile.
  """

  offset: jnp.ndarray  # float32 scalars
  slope: jnp.ndarray
  shift: jnp.ndarray
  divisor: jnp.ndarray


@struct.dataclass
class SelfExtend:
  group: jnp.ndarray  # int32 scalar G
  window: jnp.ndarray  # int32 scalar W


@struct.dataclass
class KeyWindow:
  """Which earlier keys a query may see: the last ``size`` tokens (itself included) and
  the keys at positions below ``sinks``.

  Query i sees key j <= i when index_i - index_j < size or position_j < sinks. The window
  counts tokens (their index in the row), as transformers' ``sliding_window`` does; the
  sinks count mapped positions, so in packed rows (positions restarting per document)
  each document keeps its own first tokens. One mask for Mistral's sliding window
  (sinks 0) and StreamingLLM's attention sinks plus recent window.
  """

  size: jnp.ndarray  # int32 scalar, >= 1
  sinks: jnp.ndarray  # int32 scalar, >= 0


NO_BOUND = int(np.iinfo(np.int32).max)  # an open end of a remap rule's condition


@struct.dataclass
class IndexMap:
  """p -> max(0, min((p mod period) // group + offset, cap)); period 0: no wrap.

  period 1 makes a constant (p mod 1 = 0). The clip at 0 only touches pairs an earlier
  rule takes, so their (unused) rotation stays inside the tables.
  """

  period: jnp.ndarray  # int32 scalars
  group: jnp.ndarray
  offset: jnp.ndarray
  cap: jnp.ndarray  # NO_BOUND: no cap


@struct.dataclass
class RemapRule:
  """One entry of a relative-position remap: q at ``q(p_i)``, k at ``k(p_j)`` for the pairs
  with low <= p_i // unit - p_j // unit < high; the first matching rule of a list wins."""

  q: IndexMap
  k: IndexMap
  unit: jnp.ndarray  # int32 scalars: 1 compares distances, C compares chunk indices
  low: jnp.ndarray  # -NO_BOUND / NO_BOUND: open ends
  high: jnp.ndarray
  rotary: RotaryTables | None = None  # the rule's own tables (other frequencies); None: the hooks'


@struct.dataclass
class Hooks:
  """Everything the model skeleton needs from an encoding, resolved for one length."""

  positions: PositionMap
  logit_scale: jnp.ndarray  # scalar multiplying q.k / sqrt(d)
  rotary: RotaryTables | None = None
  alibi_slopes: jnp.ndarray | None = None  # [n_heads]
  xpos: XposScales | None = None
  self_extend: SelfExtend | None = None
  query_scale: QueryScale | None = None  # position-dependent factor on q only (LogN, Llama 4)
  # Relative-position remapping (ReRoPE, STRING, Dual Chunk Attention): a tuple of
  # RemapRule, the first whose condition holds for a pair sets its rotations.
  remap: tuple | None = None
  # A local key window with optional always-visible first tokens (StreamingLLM's sinks,
  # Mistral's sliding window); None: every earlier key is visible.
  key_window: KeyWindow | None = None
  # Absolute table added to token embeddings: "none", "sinusoidal" or "learned".
  absolute: str = struct.field(pytree_node=False, default="none")
  sinusoid_inv_freq: jnp.ndarray | None = None  # [d_model // 2]
  sinusoid_layout: str = struct.field(pytree_node=False, default="interleaved")
  learned_length: int = struct.field(pytree_node=False, default=0)
  # The sequence length these hooks were resolved for (0: unknown). Rotary tables and
  # length-dependent values stop there, so the model refuses longer inputs.
  seq_len: int = struct.field(pytree_node=False, default=0)
  # Per-layer encodings: layer i uses layers[i % len(layers)] for everything attention
  # reads (the position map and absolute table stay the top-level ones). None: every
  # layer uses these hooks.
  layers: tuple | None = None


def identity_positions() -> PositionMap:
  return PositionMap(
      period=jnp.int32(0), group=jnp.int32(1), scale=jnp.float32(1.0), window=jnp.int32(0)
  )


# ----------------------------------------------------------------------------- configs


def required():
  """A parameter with no sensible default: None until set, and validate() insists."""
  return dataclasses.field(default=None, metadata={"required": True})


ROTARY_LAYOUTS = ("half", "interleaved")


def choice(default: str, choices: tuple[str, ...]):
  """A string parameter with a fixed set of values (listed by ``python -m rope_lab.pe``)."""
  return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def field_choices(cls, name: str) -> tuple[str, ...] | None:
  """The allowed values of a choice field of ``cls`` (None for an open field)."""
  return {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls)}.get(name)


@dataclasses.dataclass(frozen=True)
class Encoding:
  """Base of every method config. Subclasses set ``name``, ``paper`` and ``changes``."""

  name: ClassVar[str] = ""
  paper: ClassVar[str] = ""
  changes: ClassVar[str] = ""  # which hooks it fills, for the method table

  def __post_init__(self):
    self._coerce_types()
    self.validate()
    for field in dataclasses.fields(self):  # methods name their own checks first; this catches the rest
      allowed = field.metadata.get("choices")
      if allowed is not None:
        check(getattr(self, field.name) in allowed, self.name, field.name, f"one of {allowed}",
              getattr(self, field.name))

  def _coerce_types(self):
    """Checks every set parameter against its annotation (rope_lab.typed_values.coerce:
    ints widen to float, lists and arrays to tuples); the per-pair factor tuples hold floats."""
    hints = typing.get_type_hints(type(self))
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is None:
        continue
      hint = hints[field.name]
      if tuple in typing.get_args(hint) or hint is tuple:
        hint = tuple[float, ...]
      object.__setattr__(self, field.name,
                         coerce(value, hint, f"{self.name}: parameter {field.name!r}"))

  def validate(self) -> None:
    """Raises ConfigError for an invalid parameter. Overridden per method."""

  def params(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  # Host-side hooks, overridden by the methods that use them. ---------------------

  def rotary_dim(self, head_dim: int) -> int:
    """Number of leading head dimensions that rotate (0: no rotary encoding)."""
    return 0

  def inv_freq(self, head_dim: int, seq_len: int) -> np.ndarray | None:
    """float64 [rotary_dim // 2] inverse frequencies at the current length."""
    return None

  def attention_scaling(self, seq_len: int) -> float:
    """Factor on both q and k (as Hugging Face applies it to cos/sin); logits get its square."""
    return 1.0

  def position_map(self, seq_len: int) -> PositionMap:
    """How positions are remapped for inputs of ``seq_len`` tokens (identity by default)."""
    return identity_positions()

  def max_rotary_position(self, seq_len: int) -> int:
    """Largest mapped position the rotary tables must cover, plus one."""
    return seq_len

  def near_positions(self, seq_len: int) -> int:
    """LongRoPE's n_hat: leading positions that keep the unscaled frequencies."""
    return 0

  def hooks(self, *, head_dim: int, n_heads: int, d_model: int, seq_len: int) -> Hooks:
    """Resolves every hook for sequences of ``seq_len`` tokens."""
    if seq_len < 1:
      raise ConfigError(f"{self.name}: seq_len must be >= 1, got {seq_len}")
    tables = None
    rot_dim = self.rotary_dim(head_dim)
    if rot_dim:
      inv_freq = self.inv_freq(head_dim, seq_len)
      near = self.near_positions(seq_len)
      near_inv = self.unscaled_inv_freq(head_dim) if near else None
      tables = rotary.rotary_tables(
          inv_freq,
          max_position=self.max_rotary_position(seq_len),
          rotary_dim=rot_dim,
          layout=self.layout_name(),
          near_inv_freq=near_inv,
          near_size=near,
      )
    factor = self.attention_scaling(seq_len)
    return Hooks(
        positions=self.position_map(seq_len),
        logit_scale=jnp.float32(factor * factor),
        rotary=tables,
        seq_len=seq_len,
        **self.extra_hooks(head_dim=head_dim, n_heads=n_heads, d_model=d_model, seq_len=seq_len),
    )

  def layout_name(self) -> str:
    return "half"

  def extra_hooks(self, *, head_dim: int, n_heads: int, d_model: int, seq_len: int) -> dict:
    """Non-rotary hooks (ALiBi slopes, xPos scales, absolute tables, SelfExtend, query scales)."""
    return {}


def make(name: str, **params) -> Encoding:
  """Builds a registered encoding by name; unknown names and parameters are errors."""
  cls = REGISTRY.get(name)
  if cls is None:
    raise ConfigError(f"unknown encoding {name!r}; registered: {', '.join(sorted(REGISTRY))}")
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(params) - known)
  if unknown:
    raise ConfigError(
        f"{name}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known)) or 'none'}"
    )
  return cls(**params)


def from_dict(spec: dict[str, Any]) -> Encoding:
  """{"name": ..., <params>} -> Encoding (the form configs and JSON files use)."""
  if "name" not in spec:
    raise ConfigError(f"encoding spec needs a 'name' field, got keys {sorted(spec)}")
  params = {k: v for k, v in spec.items() if k != "name"}
  return make(spec["name"], **params)


def to_dict(encoding: Encoding) -> dict[str, Any]:
  out = {"name": encoding.name}
  for key, value in encoding.params().items():
    out[key] = list(value) if isinstance(value, tuple) else value
  return out

