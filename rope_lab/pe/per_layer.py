"""Per-layer encodings: local/global RoPE bases (Gemma 3) and NoPE every k-th layer (Llama 4's iRoPE).

A pattern of letters, one per layer and repeated over the depth, names what each layer's
attention uses: 'L' RoPE with the local base, 'G' RoPE with the global base (optionally
linearly interpolated), 'N' no rotation (with Llama 4's query temperature when
``attn_temperature_tuning``). The hooks carry one resolved set per letter position; the
model picks ``layers[i % len(pattern)]`` for layer i and never asks which letter it holds.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rope_lab.pe.base import (
    ROTARY_LAYOUTS,
    Encoding,
    Hooks,
    check,
    choice,
    identity_positions,
    make,
    register,
    required,
)
from rope_lab.pe.frequency_scalings import _check_factor

LAYER_KINDS = {"L": "local RoPE", "G": "global RoPE", "N": "NoPE"}


@register
@dataclasses.dataclass(frozen=True)
class PerLayer(Encoding):
  """Per-layer encodings (Gemma 3 local/global bases; Llama 4 iRoPE): one letter of L/G/N per layer."""

  name = "per_layer"
  paper = "Gemma Team 2025, Gemma 3 (local/global); Meta 2025, Llama 4 (iRoPE, NoPE layers)"
  changes = "per-layer rotary frequencies (or none), query scale on NoPE layers"

  layer_pattern: str | None = required()  # e.g. 'LLLLLG' (Gemma 3) or 'GGGN' (Llama 4), cycled over layers
  local_base: float = 10000.0
  global_base: float = 1000000.0
  global_factor: float = 1.0  # Position Interpolation on the global layers (Gemma 3: 8)
  rotary_fraction: float = 1.0
  layout: str = choice("half", ROTARY_LAYOUTS)
  attn_temperature_tuning: bool = False  # Llama 4's query temperature on the 'N' layers
  floor_scale: float = 8192.0
  attn_scale: float = 0.1

  def validate(self):
    check(bool(self.layer_pattern) and set(self.layer_pattern) <= set(LAYER_KINDS), self.name, "layer_pattern",
          "a non-empty string of " + ", ".join(f"'{k}' ({v})" for k, v in LAYER_KINDS.items()), self.layer_pattern)
    _check_factor(self.name, self.global_factor, "global_factor")
    for letter in sorted(set(self.layer_pattern)):
      self.layer_encoding(letter)  # validates the bases, fraction and temperature now

  def layer_encoding(self, letter: str) -> Encoding:
    """The single-layer encoding a letter of the pattern stands for."""
    rotary = dict(rotary_fraction=self.rotary_fraction, layout=self.layout)
    if letter == "L":
      return make("rope", base=self.local_base, **rotary)
    if letter == "G":
      return make("pi", base=self.global_base, factor=self.global_factor, **rotary)
    return make("nope", attn_temperature_tuning=self.attn_temperature_tuning, floor_scale=self.floor_scale,
                attn_scale=self.attn_scale)

  def layer_encodings(self, n_layers: int) -> list[Encoding]:
    return [self.layer_encoding(self.layer_pattern[i % len(self.layer_pattern)]) for i in range(n_layers)]

  def hooks(self, *, head_dim: int, n_heads: int, d_model: int, seq_len: int) -> Hooks:
    per_letter = {letter: self.layer_encoding(letter).hooks(head_dim=head_dim, n_heads=n_heads, d_model=d_model,
                                                            seq_len=seq_len)
                  for letter in set(self.layer_pattern)}
    return Hooks(positions=identity_positions(), logit_scale=jnp.float32(1.0), seq_len=seq_len,
                 layers=tuple(per_letter[letter] for letter in self.layer_pattern))
