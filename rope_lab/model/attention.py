"""Causal self-attention: one contract (``attend``) over every path.

``attend`` rotates q and k by the encoding's hooks and runs one of the paths in
``rope_lab.model.attention_paths`` (``reference``, ``dot_product``, ``chunked``), a fused
kernel (``rope_lab.model.attention_fused``), or, when the active mesh splits rows along a
``sequence`` axis, context-parallel attention (``rope_lab.model.context_parallel``). The
paths' own names are re-exported here, so callers read one module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from rope_lab.errors import ConfigError
from rope_lab.model import attention_fused, context_parallel
from rope_lab.model.attention_paths import (  # noqa: F401  (re-exported: the one attention module callers read)
    _PAD_INDEX, IMPLEMENTATIONS, NEG_INF, Rotated, TokenMeta, _blockwise, allowed, block_logits, chunked,
    chunked_cross, dot_product, reference, rotate, rotate_cross, scale_queries, wholly_allowed)
from rope_lab.pe.base import Hooks


# ----------------------------------------------------------------------------- dispatch


def attend(
    q_BxLxHxD,
    k_BxLxKxD,
    v_BxLxKxD,
    meta: TokenMeta,
    hooks: Hooks,
    *,
    implementation: str = "reference",
    chunk_size: int = 512,
    soft_cap: float | None = None,
    fused_kernel: str = "auto",
    packed: bool = True,
) -> jnp.ndarray:
  """Causal attention of un-rotated q, k, v: out [B, L, H, Dh] in v's dtype.

  ``fused_kernel`` and ``packed`` (whether the segment ids may hold several segments)
  matter only to ``implementation='fused'``. When the active mesh splits rows over a
  ``sequence`` axis, attention runs context-parallel (``rope_lab.model.context_parallel``).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; valid: {IMPLEMENTATIONS}")
  rot = rotate(hooks, q_BxLxHxD, k_BxLxKxD, meta.positions)
  if context_parallel.sequence_parallelism() > 1:
    if hooks.remap is not None:
      raise ConfigError("context-parallel attention (a 'sequence' mesh axis) does not carry relative-"
                        "position remap rules (ReRoPE, STRING, Dual Chunk Attention, StreamingLLM); use a mesh "
                        "without a sequence split")
    return context_parallel.attend(rot, v_BxLxKxD, meta, hooks, chunk_size=chunk_size, soft_cap=soft_cap)
  if implementation == "fused":
    choice = attention_fused.choose_kernel(
        fused_kernel, jax.default_backend(),
        attention_fused.features_of(hooks, packed=packed, soft_cap=soft_cap, dtype=q_BxLxHxD.dtype,
                                    q_shape=q_BxLxHxD.shape, kv_heads=k_BxLxKxD.shape[2]))
    attention_fused.record(choice)
    if choice.kernel != attention_fused.FALLBACK:
      q = rot.q.reshape(q_BxLxHxD.shape)
      return attention_fused.attend(choice, q, rot.k, v_BxLxKxD, meta.segments, meta.positions, hooks,
                                    packed=packed, soft_cap=soft_cap).astype(v_BxLxKxD.dtype)
    implementation = attention_fused.FALLBACK
  if implementation == "dot_product" and hooks.remap is not None:
    logging.log_first_n(logging.WARNING, "attention 'dot_product' falls back to 'chunked': relative-"
                        "position remap rules (ReRoPE, STRING, Dual Chunk Attention, StreamingLLM) merge several "
                        "rotations per pair", 1)
    implementation = "chunked"
  if implementation == "reference":
    return reference(rot, v_BxLxKxD, meta, hooks, soft_cap=soft_cap)[0]
  if implementation == "dot_product":
    return dot_product(rot, v_BxLxKxD, meta, hooks, soft_cap=soft_cap)
  return chunked(rot, v_BxLxKxD, meta, hooks, chunk_size=chunk_size, soft_cap=soft_cap)


def attend_with_probs(
    q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, meta: TokenMeta, hooks: Hooks, *, soft_cap: float | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Reference attention returning (out [B, L, H, Dh], probabilities float32 [B, H, L, L])."""
  rot = rotate(hooks, q_BxLxHxD, k_BxLxKxD, meta.positions)
  return reference(rot, v_BxLxKxD, meta, hooks, soft_cap=soft_cap)


# ----------------------------------------------------------------------------- shifted sparse attention


def shifted_group_meta(meta: TokenMeta, group_size: int, shifted: bool) -> TokenMeta:
  """``meta`` whose windows also separate S2-Attn groups of ``group_size`` tokens.

  Token i joins group i // G, or (i + G // 2) // G when ``shifted``: then the first G // 2
  tokens form a group of their own and so do the last G // 2 ones. This is what the
  LongLoRA reference trains with (``forward_flashattn`` cuts the shifted half's rows at
  G/2, 3G/2, ... with ``cu_seqlens``). Its ``roll``-based version instead wraps the first
  G/2 tokens behind the last ones, where they see the end of the row, i.e. the future.
  """
  offset = group_size // 2 if shifted else 0
  groups = (meta.index + offset) // group_size
  per_window = meta.index.shape[1] // group_size + 2  # more group ids than any row has
  return meta._replace(windows=meta.windows * per_window + groups)


def attend_shifted_groups(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, meta: TokenMeta, hooks: Hooks, *,
                          group_size: int, implementation: str = "reference",
                          **kwargs) -> jnp.ndarray:
  """Shifted sparse attention (S2-Attn, LongLoRA: Chen et al. 2023), a training-time pattern:
  heads [0, H/2) attend causally within groups of ``group_size`` tokens, heads [H/2, H)
  within groups shifted by half a group (``shifted_group_meta``), on top of every other
  mask. Same contract as :func:`attend`; ``kwargs`` are its keyword arguments.
  """
  n_heads, n_kv = q_BxLxHxD.shape[2], k_BxLxKxD.shape[2]
  if n_heads % 2:
    raise ConfigError(f"shifted sparse attention splits the heads in two halves; n_heads={n_heads} is odd")
  if n_kv % 2:  # the halves cannot split the kv heads: give every query head its own copy
    k_BxLxKxD = jnp.repeat(k_BxLxKxD, n_heads // n_kv, axis=2)
    v_BxLxKxD = jnp.repeat(v_BxLxKxD, n_heads // n_kv, axis=2)
    n_kv = n_heads
  if implementation == "fused":  # the fused kernels do not read the windows that hold the groups
    implementation = attention_fused.FALLBACK
  outs = []
  for half, shifted in ((0, False), (1, True)):
    heads = slice(half * n_heads // 2, (half + 1) * n_heads // 2)
    kv_heads = slice(half * n_kv // 2, (half + 1) * n_kv // 2)
    half_hooks = hooks if hooks.alibi_slopes is None else hooks.replace(alibi_slopes=hooks.alibi_slopes[heads])
    outs.append(attend(q_BxLxHxD[:, :, heads], k_BxLxKxD[:, :, kv_heads], v_BxLxKxD[:, :, kv_heads],
                       shifted_group_meta(meta, group_size, shifted), half_hooks,
                       implementation=implementation, **kwargs))
  return jnp.concatenate(outs, axis=2)
