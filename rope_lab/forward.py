"""What every forward pass shares, in training, evaluation and the LongRoPE search.

The encoding resolved for a model's shape (its hooks), the per-token loss, and the
parameters' abstract layout on a mesh (what a checkpoint is restored into). None of it
depends on the optimizer or the training step.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rope_lab import pe, sharding
from rope_lab.encoding_range import check_xpos_length
from rope_lab.model import ModelConfig, Transformer


def encoding_hooks(model: ModelConfig, encoding: pe.Encoding, seq_len: int, *,
                   where: str = "evaluation length") -> pe.Hooks:
  """``encoding`` resolved for ``model``'s shape at windows of ``seq_len`` tokens, after
  checking that xPos's scales stay finite there (``where`` names the length in the error)."""
  check_xpos_length(encoding, head_dim=model.head_dim, compute_dtype=model.compute_dtype,
                    length=seq_len, where=where)
  return encoding.hooks(head_dim=model.head_dim, n_heads=model.n_heads, d_model=model.d_model,
                        seq_len=seq_len)


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy per token in float32: logsumexp(logits) - logit[target]."""
  logits = logits.astype(jnp.float32)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target_logits


def param_initializer(model: nn.Module, hooks: pe.Hooks, seq_len: int):
  """rng -> the model's parameters (boxed with their logical axis names)."""
  def init(rng):
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(rng, tokens, hooks=hooks)["params"]
  return init


def param_layout(model_cfg: ModelConfig, hooks: pe.Hooks, seq_len: int, mesh: Mesh,
                 rules) -> tuple[Any, Any]:
  """(abstract parameters, their shardings) on ``mesh``; nothing is computed or allocated."""
  boxed = jax.eval_shape(param_initializer(Transformer(model_cfg), hooks, seq_len), jax.random.key(0))
  shardings = sharding.tree_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  return abstract, shardings
