"""Position-dependent query scaling: LogN attention (Qwen) and Llama 4's attention temperature tuning.

Both multiply q (not k) by a factor that grows with the query's position, so the
attention logits of late queries sharpen as the context grows (the softmax entropy
otherwise rises with the number of keys). They enter the model through
:class:`rope_lab.pe.QueryScale`, applied wherever q is rotated, so every attention path
honours them. LogN ships with Qwen's own dynamic NTK rule, as Qwen used the two together.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from rope_lab.pe.base import QueryScale, check, choice, register, required
from rope_lab.pe.frequency_scalings import RoPE, _check_original, ntk_base
from rope_lab.pe.rotary import default_inv_freq

QWEN_NTK = ("qwen", "none")


def logn_query_scale(original: int) -> QueryScale:
  """Qwen's LogN: q x log_L(p + 1) for queries at p + 1 > L, else 1."""
  return QueryScale(offset=jnp.float32(0.0), slope=jnp.float32(1.0 / math.log(original)),
                    shift=jnp.float32(0.0), divisor=jnp.float32(1.0))


def temperature_tuning_query_scale(floor_scale: float, attn_scale: float) -> QueryScale:
  """Llama 4: q x (1 + attn_scale * ln(1 + floor((p + 1) / floor_scale)))."""
  return QueryScale(offset=jnp.float32(1.0), slope=jnp.float32(attn_scale), shift=jnp.float32(1.0),
                    divisor=jnp.float32(floor_scale))


def qwen_ntk_alpha(seq_len: int, original: int) -> float:
  """Qwen's dynamic NTK: alpha = max(1, 2^ceil(log2(L / L_orig) + 1) - 1): 1, 3, 7, ... per doubling."""
  return max(2.0 ** math.ceil(math.log2(seq_len / original) + 1) - 1, 1.0)


@register
@dataclasses.dataclass(frozen=True)
class LogN(RoPE):
  """LogN attention (Qwen): q x log_L(p + 1) beyond the training length L, with Qwen's dynamic NTK."""

  name = "logn"
  paper = "Qwen Team 2023 (Qwen-7B: dynamic NTK + LogN attention); Chiang & Cholak 2022"
  changes = "query scale (position-dependent), rotary frequencies (follow the current length)"

  original_max_position_embeddings: int | None = required()  # L, Qwen's seq_length
  dynamic_ntk: str = choice("qwen", QWEN_NTK)  # 'qwen': base x alpha^(d/(d-2)); 'none': plain RoPE

  def validate(self):
    super().validate()
    _check_original(self.name, self.original_max_position_embeddings)

  def inv_freq(self, head_dim, seq_len):
    dim = self.rotary_dim(head_dim)
    if self.dynamic_ntk == "none":
      return default_inv_freq(dim, self.base)
    alpha = qwen_ntk_alpha(seq_len, self.original_max_position_embeddings)
    return default_inv_freq(dim, ntk_base(self.base, alpha, dim))

  def extra_hooks(self, **unused):
    return {"query_scale": logn_query_scale(self.original_max_position_embeddings)}


def check_temperature_tuning(method: str, floor_scale: float, attn_scale: float) -> None:
  check(floor_scale > 0, method, "floor_scale", "> 0 (tokens)", floor_scale)
  check(attn_scale >= 0, method, "attn_scale", ">= 0", attn_scale)
