"""AdamW with linear warmup and cosine (or constant) decay, clipping and a decay mask."""

from __future__ import annotations

import optax
import jax

from rope_lab.config import TrainConfig


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to ``min_lr_ratio`` x peak at
  ``steps`` (or a constant peak)."""
  peak = cfg.learning_rate
  warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps) if cfg.warmup_steps else None
  if cfg.lr_schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.min_lr_ratio)
  if warmup is None:
    return after
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def _is_decayed(path, leaf) -> bool:
  """Matrices decay; norm scales and biases (and any 0/1-d leaf) do not."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  if any("norm" in name for name in names) or "bias" in names[-1]:
    return False
  return getattr(leaf, "ndim", 0) >= 2


def weight_decay_mask(params):
  """Pytree of bools matching ``params``: True where weight decay applies."""
  return jax.tree_util.tree_map_with_path(_is_decayed, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Clip by global norm (when enabled), then AdamW with the schedule and the decay mask."""
  adamw = optax.adamw(
      learning_rate_schedule(cfg),
      b1=cfg.adam_b1,
      b2=cfg.adam_b2,
      eps=cfg.adam_eps,
      weight_decay=cfg.weight_decay,
      mask=weight_decay_mask,
  )
  if cfg.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)
  return adamw
