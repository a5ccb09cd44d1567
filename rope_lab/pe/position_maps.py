"""Position maps on top of RoPE: randomized positions and SelfExtend's grouped positions.

These keep RoPE's frequencies and change which positions q and k are rotated at: sorted
random draws (Ruoss et al. 2023) or, beyond a neighbour window, grouped positions merged
with the normal ones in attention (Jin et al. 2024).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rope_lab.pe.base import (
    ConfigError,
    PositionMap,
    SelfExtend,
    check,
    choice,
    identity_positions,
    register,
    required,
)
from rope_lab.pe.frequency_scalings import RoPE, _check_original


RANDOMIZED_EVALUATION = ("sampled", "plain")


@register
@dataclasses.dataclass(frozen=True)
class RandomizedPositions(RoPE):
  """Randomized positions (Ruoss et al. 2023): sorted random positions from [0, N).

  Each packed segment draws its own sorted distinct positions from [0, N), in training
  and, as the reference evaluates, at evaluation too (``evaluation='sampled'``, a key
  from ``evaluation_seed``); ``evaluation='plain'`` evaluates at 0..L-1 instead.
  """

  name = "randomized"
  paper = "Ruoss et al. 2023, Randomized Positional Encodings"
  changes = "position map (sorted random draws)"

  max_position: int | None = required()
  evaluation: str = choice("sampled", RANDOMIZED_EVALUATION)  # draws at evaluation, or plain 0..L-1
  evaluation_seed: int = 0  # key of the evaluation draws (one independent draw per row of a batch)

  def validate(self):
    super().validate()
    check(self.max_position is not None and self.max_position >= 2, self.name, "max_position",
          ">= 2 (the range positions are drawn from)", self.max_position)
    check(self.evaluation in RANDOMIZED_EVALUATION, self.name, "evaluation", f"one of {RANDOMIZED_EVALUATION}",
          self.evaluation)

  def position_map(self, seq_len: int) -> PositionMap:
    sampled = self.evaluation == "sampled"
    if sampled and seq_len > self.max_position:
      raise ConfigError(
          f"{self.name}: seq_len {seq_len} exceeds max_position {self.max_position}: an input draws "
          "distinct positions from [0, max_position) (evaluation='plain' evaluates at 0..L-1)")
    return identity_positions().replace(randomize_range=self.max_position, randomize_at_evaluation=sampled,
                                        randomize_seed=self.evaluation_seed)

  def max_rotary_position(self, seq_len):
    return max(seq_len, self.max_position)


@register
@dataclasses.dataclass(frozen=True)
class SelfExtendRoPE(RoPE):
  """SelfExtend (Jin et al. 2024): normal positions within W, floor(p/G) positions beyond.

  Grouped query position floor(i/G) + W - floor(W/G) keeps distances continuous at W.
  """

  name = "self_extend"
  paper = "Jin et al. 2024, LLM Maybe LongLM (SelfExtend)"
  changes = "position map (merged normal + grouped attention)"

  group_size: int = 8
  window: int = 512
  original_max_position_embeddings: int | None = required()

  def validate(self):
    super().validate()
    _check_original(self.name, self.original_max_position_embeddings)
    check(self.group_size >= 1, self.name, "group_size", ">= 1", self.group_size)
    check(1 <= self.window < self.original_max_position_embeddings, self.name, "window",
          f"in [1, original_max_position_embeddings={self.original_max_position_embeddings})", self.window)

  def max_rotary_position(self, seq_len):
    # Grouped query positions floor(i/G) + W - floor(W/G) pass L - 1 when W is near or past L.
    g, w = self.group_size, self.window
    return max(seq_len, (seq_len - 1) // g + w - w // g + 1)

  def extra_hooks(self, **unused):
    return {"self_extend": SelfExtend(group=jnp.int32(self.group_size), window=jnp.int32(self.window))}
