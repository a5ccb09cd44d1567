"""Relative-position remapping: ReRoPE, Leaky ReRoPE, STRING and Dual Chunk Attention.

Each keeps RoPE's frequencies and changes the relative position a (query, key) pair sees,
by rotating q and k at other positions for some pairs. All are one list of rules
(``RemapRule``): a query map, a key map and a condition on p_i // unit - p_j // unit; the
first rule whose condition holds sets the pair's rotations, and the last rule takes every
pair the earlier ones leave. SelfExtend is the two-rule case (``self_extend_rules``).
The reference and chunked attention paths honour the rules; ``dot_product`` and ``fused``
fall back to ``chunked`` with a notice, and context-parallel attention refuses them.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from rope_lab.pe.base import NO_BOUND, ConfigError, IndexMap, RemapRule, check, register, required
from rope_lab.pe.frequency_scalings import RoPE, _check_original
from rope_lab.pe.query_scaling import logn_query_scale


def positions_map(*, period: int = 0, group: int = 1, offset: int = 0, cap: int = NO_BOUND) -> IndexMap:
  """p -> max(0, min((p mod period) // group + offset, cap)); the default is the identity."""
  return IndexMap(period=jnp.int32(period), group=jnp.int32(group), offset=jnp.int32(offset),
                  cap=jnp.int32(cap))


def constant_map(value: int) -> IndexMap:
  """Every token at position ``value`` (p mod 1 = 0)."""
  return positions_map(period=1, offset=value)


def remap_rule(q: IndexMap, k: IndexMap, *, unit: int = 1, low: int = -NO_BOUND, high: int = NO_BOUND,
               rotary=None) -> RemapRule:
  """A rule for the pairs with low <= p_i // unit - p_j // unit < high (default: every pair)."""
  return RemapRule(q=q, k=k, unit=jnp.int32(unit), low=jnp.int32(low), high=jnp.int32(high), rotary=rotary)


def check_rules(rules) -> None:
  """Raises ConfigError unless the rules are a non-empty list whose last rule takes every pair."""
  if not rules:
    raise ConfigError("relative-position remap: at least one rule is needed")
  last = rules[-1]
  if int(last.low) != -NO_BOUND or int(last.high) != NO_BOUND:
    raise ConfigError("relative-position remap: the last rule must take every pair (no condition), got "
                      f"low={int(last.low)}, high={int(last.high)}")


def mapped_positions_end(index_map: IndexMap, seq_len: int) -> int:
  """1 + the largest position ``index_map`` gives a token at 0..seq_len-1 (what tables must cover).

  The map clip((p mod period) // group + offset, 0, cap) never decreases in p mod period,
  so its largest value is at the largest p mod period: min(seq_len, period) - 1. One
  position of one shape is mapped (generation asks at every length; an arange of each
  length would compile the map's operations once per length).
  """
  from rope_lab.pe import apply  # local import: apply imports base, as this module does
  period = int(index_map.period)
  last = seq_len - 1 if period <= 0 else min(seq_len, period) - 1
  return int(np.asarray(apply.index_map(index_map, np.full((1, 1), last, np.int32)))[0, 0]) + 1


def self_extend_rules(group: int, window: int) -> list[RemapRule]:
  """SelfExtend (Jin et al. 2024) as two rules: normal positions for i - j < W; else
  q at floor(i/G) + W - floor(W/G) and k at floor(j/G)."""
  return [remap_rule(positions_map(), positions_map(), high=window),
          remap_rule(positions_map(group=group, offset=window - window // group), positions_map(group=group))]


@dataclasses.dataclass(frozen=True)
class RemappedRoPE(RoPE):
  """RoPE with relative-position remap rules; subclasses define ``rules``."""

  def rules(self, head_dim: int, seq_len: int) -> list[RemapRule]:
    raise NotImplementedError

  def _rules_on_main_tables(self, seq_len: int) -> list[RemapRule]:
    # Main-table rules do not depend on head_dim; own tables are built per rule.
    return [r for r in self.rules(0, seq_len) if r.rotary is None]

  def max_rotary_position(self, seq_len):
    ends = [mapped_positions_end(m, seq_len) for r in self._rules_on_main_tables(seq_len) for m in (r.q, r.k)]
    return max([seq_len] + ends)

  def query_scale(self):
    return None

  def extra_hooks(self, *, head_dim, seq_len, **unused):
    rules = self.rules(head_dim, seq_len)
    check_rules(rules)
    out = {"remap": tuple(rules)}
    if self.query_scale() is not None:
      out["query_scale"] = self.query_scale()
    return out


@register
@dataclasses.dataclass(frozen=True)
class ReRoPE(RemappedRoPE):
  """ReRoPE (Su 2023): relative positions d within the window w, w beyond it.

  As jquesnelle/yarn's ``LlamaReRoPE.py``: pairs with d < w use q and k rotated at their
  positions; the others q rotated at w and k unrotated. With ``training_length`` set, q is
  also scaled by max(1, log(p + 1) / log(training_length)), as the reference does.
  """

  name = "rerope"
  paper = "Su 2023, Rectified Rotary Position Embeddings (ReRoPE)"
  changes = "relative-position remap (clamped at the window)"

  window: int = 512
  training_length: int | None = None  # LogN query scaling over this length (None: off)

  def validate(self):
    super().validate()
    check(self.window >= 1, self.name, "window", ">= 1", self.window)
    check(self.training_length is None or self.training_length >= 2, self.name, "training_length",
          "None or >= 2", self.training_length)

  def rules(self, head_dim, seq_len):
    return [remap_rule(positions_map(), positions_map(), high=self.window),
            remap_rule(constant_map(self.window), constant_map(0))]

  def query_scale(self):
    return None if self.training_length is None else logn_query_scale(self.training_length)


@register
@dataclasses.dataclass(frozen=True)
class LeakyReRoPE(ReRoPE):
  """Leaky ReRoPE (Su 2023): d within the window w, w + (d - w) / k beyond it.

  Beyond the window q is rotated at p + w (k - 1) and k at p, both with the frequencies
  divided by k: ((i + w (k - 1)) - j) / k = w + (d - w) / k. w (k - 1) must be whole.
  """

  name = "leaky_rerope"
  paper = "Su 2023, Rectified Rotary Position Embeddings (Leaky ReRoPE)"
  changes = "relative-position remap (slope 1/k beyond the window)"

  leak: float = 16.0  # k: beyond the window relative positions grow at 1/k

  def validate(self):
    super().validate()
    check(self.leak > 1.0, self.name, "leak", "> 1", self.leak)
    shift = self.window * (self.leak - 1.0)
    check(float(shift).is_integer(), self.name, "leak", f"such that window * (leak - 1) is whole "
          f"(window={self.window})", self.leak)

  def rules(self, head_dim, seq_len):
    from rope_lab.pe import rotary  # local import: rotary imports base
    shift = int(self.window * (self.leak - 1.0))
    tables = None
    if head_dim:
      tables = rotary.rotary_tables(self.inv_freq(head_dim, seq_len) / self.leak, max_position=seq_len + shift,
                                    rotary_dim=self.rotary_dim(head_dim), layout=self.layout_name())
    return [remap_rule(positions_map(), positions_map(), high=self.window),
            remap_rule(positions_map(offset=shift), positions_map(), rotary=tables)]

  def _rules_on_main_tables(self, seq_len):
    return self.rules(0, seq_len)[:1]


@register
@dataclasses.dataclass(frozen=True)
class STRING(RemappedRoPE):
  """STRING (An et al. 2024): distances d >= S reuse the well-trained d - S + W.

  Pairs with d < S (the shifted offset) keep RoPE; the others rotate q at p - S + W and
  k at p, so the rarely trained large distances are overwritten by shifted frequent ones.
  """

  name = "string"
  paper = "An et al. 2024, Why Does the Effective Context Length of LLMs Fall Short? (STRING)"
  changes = "relative-position remap (shifted beyond the offset)"

  shifted_offset: int | None = required()  # S; the reference uses about 0.33 x the context length
  local_value: int = 128  # W: the relative position at d = S

  def validate(self):
    super().validate()
    check(self.shifted_offset is not None and self.shifted_offset >= 1, self.name, "shifted_offset",
          ">= 1", self.shifted_offset)
    check(0 <= self.local_value < self.shifted_offset, self.name, "local_value",
          f"in [0, shifted_offset={self.shifted_offset})", self.local_value)

  def rules(self, head_dim, seq_len):
    s, w = self.shifted_offset, self.local_value
    return [remap_rule(positions_map(), positions_map(), high=s),
            remap_rule(positions_map(offset=w - s), positions_map())]


@register
@dataclasses.dataclass(frozen=True)
class DualChunkAttention(RemappedRoPE):
  """Dual Chunk Attention (An et al. 2024, ChunkLlama): positions inside chunks of c = S - w.

  Keys sit at j mod c. A query attends to its own chunk at i mod c (intra-chunk), to the
  previous chunk at min(i mod c + c, S) (successive-chunk) and to earlier chunks at
  min(2c - 1, S) (inter-chunk), as HKUNLP/ChunkLlama's ``chunkllama_attn_replace.py``;
  S defaults to 3/4 and w to 1/16 of the pretraining length.
  """

  name = "dual_chunk"
  paper = "An et al. 2024, Training-Free Long-Context Scaling of LLMs (Dual Chunk Attention)"
  changes = "relative-position remap (intra / successive / inter-chunk positions)"

  original_max_position_embeddings: int | None = required()
  chunk_size: int | None = None  # S (None: 3/4 of the pretraining length)
  local_window: int | None = None  # w (None: 1/16 of the pretraining length)

  def validate(self):
    super().validate()
    _check_original(self.name, self.original_max_position_embeddings)
    size, window = self.sizes()
    check(size >= 2, self.name, "chunk_size", ">= 2", size)
    check(1 <= window < size, self.name, "local_window", f"in [1, chunk_size={size})", window)

  def sizes(self) -> tuple[int, int]:
    original = self.original_max_position_embeddings
    size = self.chunk_size if self.chunk_size is not None else original * 3 // 4
    window = self.local_window if self.local_window is not None else original // 16
    return size, window

  def rules(self, head_dim, seq_len):
    size, window = self.sizes()
    c = size - window
    key = positions_map(period=c)
    return [remap_rule(positions_map(period=c), key, unit=c, low=0, high=1),
            remap_rule(positions_map(period=c, offset=c, cap=size), key, unit=c, low=1, high=2),
            remap_rule(constant_map(min(2 * c - 1, size)), key)]
