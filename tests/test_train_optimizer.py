"""Learning-rate schedule and the weight-decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rope_lab.training import optimizer
from rope_lab.config import TrainConfig


def test_warmup_then_cosine_to_the_final_ratio():
  cfg = TrainConfig(learning_rate=1e-3, warmup_steps=10, steps=110, min_lr_ratio=0.1)
  lr = optimizer.learning_rate_schedule(cfg)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                             [0.0, 5e-4, 1e-3, 0.55e-3, 1e-4], rtol=1e-5, atol=1e-9)


def test_constant_schedule_stays_at_the_peak_after_warmup():
  lr = optimizer.learning_rate_schedule(
      TrainConfig(learning_rate=2e-5, warmup_steps=20, lr_schedule="constant", steps=400))
  np.testing.assert_allclose([lr(10), lr(20), lr(399)], [1e-5, 2e-5, 2e-5], rtol=1e-6)


def test_no_weight_decay_on_norms_and_biases():
  params = {
      "embed": {"embedding": jnp.ones((8, 4))},
      "layers_0": {"attn_norm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
                   "attn": {"q": {"kernel": jnp.ones((4, 2, 2)), "bias": jnp.zeros((2, 2))}}},
      "final_norm": {"scale": jnp.ones(4)},
  }
  mask = optimizer.weight_decay_mask(params)
  assert mask["embed"]["embedding"] and mask["layers_0"]["attn"]["q"]["kernel"]
  assert not mask["layers_0"]["attn"]["q"]["bias"]  # 2-d, but a bias
  assert not mask["layers_0"]["attn_norm"]["scale"] and not mask["layers_0"]["attn_norm"]["bias"]
  assert not mask["final_norm"]["scale"]

  # With zero gradients only the decayed leaves move.
  tx = optimizer.make_optimizer(TrainConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.5))
  updates, _ = jax.jit(tx.update)(jax_zeros(params), tx.init(params), params)
  moved = {k: bool(np.any(np.asarray(v) != 0)) for k, v in flat(updates).items()}
  assert moved == {k: bool(v) for k, v in flat(mask).items()}


def jax_zeros(tree):
  return optax.tree_utils.tree_zeros_like(tree)


def flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out
