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

from rope_lab import pe

from rope_lab.running import sharding
from rope_lab.pe.length_range import check_xpos_length
from rope_lab.model.skeleton import ModelConfig, Transformer, output_logits


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


def blockwise_token_losses(cfg: ModelConfig, params, hidden_BxLxD: jax.Array, targets_BxL: jax.Array, *,
                           block_tokens: int) -> jax.Array:
  """``token_losses(output_logits(...), targets)`` [B, L] from final-norm hidden states,
  ``block_tokens`` positions at a time: the [B, L, V] logits of a long window (6 GiB at
  32K tokens and a 49K vocabulary) never exist at once, only [B, block, V]."""
  b, length, _ = hidden_BxLxD.shape
  block = max(1, min(block_tokens, length))
  n_blocks = -(-length // block)
  pad = n_blocks * block - length
  blocks_of = lambda x: jnp.moveaxis(  # [B, L, ...] -> [n_blocks, B, block, ...]
      jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)).reshape(b, n_blocks, block, *x.shape[2:]), 1, 0)
  losses = jax.lax.map(lambda xt: token_losses(output_logits(cfg, params, xt[0]), xt[1]),
                       (blocks_of(hidden_BxLxD), blocks_of(targets_BxL)))
  return jnp.moveaxis(losses, 0, 1).reshape(b, n_blocks * block)[:, :length]


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
