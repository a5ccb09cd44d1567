"""Causal self-attention's computations: the reference, ``dot_product`` and chunked paths.

Every path computes, for query token i and key token j (H query heads share K key/value
heads, head h reading kv head h // (H / K), as Hugging Face's ``repeat_kv``)::

    s_ij = cap(logit_scale * q_i . k_j / sqrt(Dh)) + bias_ij      (cap: c tanh(s / c), off by default)
    a_ij = softmax_j(s_ij over allowed j),    out_i = sum_j a_ij v_j

* q and k are rotated (rotary + xPos, ``pe.apply.rotate_qk``) at the mapped positions p.
* SelfExtend (Jin et al. 2024): s_ij uses q/k rotated at the normal positions when
  p_i - p_j < W and q/k rotated at the grouped positions (``pe.apply.self_extend_positions``)
  otherwise (``pe.apply.self_extend_use_normal``).
* Relative-position remapping (ReRoPE, STRING, Dual Chunk Attention, StreamingLLM): s_ij uses q/k
  rotated at the positions of the first remap rule whose condition holds for (p_i, p_j)
  (``pe.apply.rotate_remapped``, ``pe.apply.remap_applies``); SelfExtend is the two-rule case.
* bias_ij: ALiBi's -m_h |p_i - p_j| (``pe.apply.alibi_bias``) when the hooks carry slopes.
* j is allowed when j <= i (token index, never the mapped position, which may wrap or
  restart), segment_i == segment_j and window_i == window_j (parallel context windows),
  and, with a key window (``hooks.key_window``: Mistral's sliding window, StreamingLLM's
  sinks and recent window), when i - j < size or p_j < sinks.

The paths (``IMPLEMENTATIONS``), all honouring every hook; ``rope_lab.model.attention.attend``
chooses among them:

* ``reference``: einsum, masks and softmax in float32 over the full [L, L] logits; the
  only one that can return the attention probabilities.
* ``dot_product``: ``jax.nn.dot_product_attention`` with the ALiBi bias and a boolean mask,
  pinned to ``implementation='xla'`` so every backend computes the same thing. Remap rules
  are not expressed: ``attend`` runs ``chunked`` for them instead, with a notice. SelfExtend is expressed exactly in one call by
  concatenating along the head dimension, q' = [q_near | q_far], and along the keys,
  k' = [[k_near | 0] ; [0 | k_far]], v' = [[v | 0] ; [v | 0]], with the mask choosing the
  near copy of key j inside the window and the far copy outside; one softmax over 2L keys
  is then exactly the merged softmax (at 4x the logit flops). The soft cap cannot be
  expressed; ``ModelConfig`` rejects that combination.
* ``chunked``: blockwise attention with an online softmax (Milakov & Gimelshein 2018; Dao
  et al. 2022): a loop over query blocks and, for each, a loop over key blocks in which
  blocks wholly in the future (or, with a key window, wholly outside it and its sinks) are
  skipped. Logits, bias, masks, the remap rules and the SelfExtend merge are computed per
  [C, C] block from the token metadata, so memory grows linearly with L. The forward pass
  loops only over each query block's needed key blocks; the backward pass differentiates
  fixed-length scans over all of them (what reverse mode needs) and rematerialises each
  query block (``jax.checkpoint``), so gradients also stay linear in memory.
* ``fused``: the platform's fused kernel (cuDNN or Pallas on GPU, splash on TPU, rope_lab's
  C++ kernel on CPU), chosen
  per call by ``rope_lab.model.attention_fused``, which falls back to ``chunked`` for what no
  kernel expresses.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rope_lab.pe import apply as pe_apply
from rope_lab.errors import ConfigError
from rope_lab.pe.base import Hooks, KeyWindow

IMPLEMENTATIONS = ("reference", "dot_product", "chunked", "fused")

# Masked logits: finite (so 0 * masked stays 0 and max() over a masked block is defined)
# yet far below any real logit, so exp(masked - max) underflows to exactly 0.
NEG_INF = -0.5 * float(jnp.finfo(jnp.float32).max)
_PAD_INDEX = int(jnp.iinfo(jnp.int32).max)  # token index of chunk padding: in every query's future


class TokenMeta(NamedTuple):
  """Per-token facts the masks, bias and rotation read, each int32 [B, L]."""

  index: jnp.ndarray  # position of the token in its row: causality
  positions: jnp.ndarray  # mapped positions (pe.apply.map_positions): rotary, ALiBi, SelfExtend
  segments: jnp.ndarray  # packed-document id (0 = padding); all equal without segment masking
  windows: jnp.ndarray  # parallel-context window id; all 0 unless the position map has a window


class Rotated(NamedTuple):
  """q [B, L, K, G, Dh] and k [B, L, K, Dh] after rotary/xPos; ``*_far`` only with SelfExtend.

  With remap rules, q/k hold the first rule's rotation and ``remap_q``/``remap_k`` the
  later rules', in order.
  """

  q: jnp.ndarray
  k: jnp.ndarray
  q_far: jnp.ndarray | None = None
  k_far: jnp.ndarray | None = None
  remap_q: tuple = ()
  remap_k: tuple = ()


def rotate(hooks: Hooks, q_BxLxHxD, k_BxLxKxD, positions_BxL) -> Rotated:
  """Rotates q and k at the mapped positions (and, for SelfExtend, at the grouped ones)."""
  return rotate_cross(hooks, q_BxLxHxD, k_BxLxKxD, positions_BxL, positions_BxL)


def rotate_cross(hooks: Hooks, q_BxLqxHxD, k_BxLkxKxD, q_positions_BxLq, k_positions_BxLk) -> Rotated:
  """``rotate`` for query rows and key rows at their own positions (a KV cache's new tokens
  against everything cached): every rotation the attention paths read, remap rules and
  SelfExtend's grouped positions included."""
  b, n_q, n_heads, head_dim = q_BxLqxHxD.shape
  n_kv = k_BxLkxKxD.shape[2]
  group = lambda q: q.reshape(b, n_q, n_kv, n_heads // n_kv, head_dim)
  if hooks.remap is not None:
    qs, ks = pe_apply.rotate_remapped(hooks, q_BxLqxHxD, k_BxLkxKxD, q_positions_BxLq, k_positions_BxLk)
    return Rotated(group(qs[0]), ks[0], remap_q=tuple(group(q) for q in qs[1:]), remap_k=ks[1:])
  q, k = pe_apply.rotate_qk(hooks, q_BxLqxHxD, k_BxLkxKxD, q_positions_BxLq, k_positions_BxLk)
  if hooks.self_extend is None:
    return Rotated(group(q), k)
  q_grouped, _ = pe_apply.self_extend_positions(hooks.self_extend, q_positions_BxLq)
  _, k_grouped = pe_apply.self_extend_positions(hooks.self_extend, k_positions_BxLk)
  q_far, k_far = pe_apply.rotate_qk(hooks, q_BxLqxHxD, k_BxLkxKxD, q_grouped, k_grouped)
  return Rotated(group(q), k, group(q_far), k_far)


def allowed(q_meta: TokenMeta, k_meta: TokenMeta, key_window: KeyWindow | None = None) -> jnp.ndarray:
  """bool [B, Lq, Lk]: causal, same segment, same window, and inside the key window if any."""
  pair = lambda a, b: (a[:, :, None], b[:, None, :])
  qi, ki = pair(q_meta.index, k_meta.index)
  qs, ks = pair(q_meta.segments, k_meta.segments)
  qw, kw = pair(q_meta.windows, k_meta.windows)
  mask = (qi >= ki) & (qs == ks) & (qw == kw)
  if key_window is not None:
    mask &= (qi - ki < key_window.size) | (k_meta.positions[:, None, :] < key_window.sinks)
  return mask


# The two attention products fold the G query heads sharing a kv head into the query
# rows, so each is one batched GEMM over (B, K); XLA:CPU runs a dot with two free lhs
# dimensions markedly slower.


def _scores(q, k, heads_major: bool = False) -> jnp.ndarray:
  """q . k in float32: [B, K, G, Q, S], from q [B, Q, K, G, D] and k [B, S, K, D], or with
  ``heads_major`` from q [B, K, G, Q, D] and k [B, K, S, D] (the chunked path's blocks,
  transposed once outside its loops instead of in every block)."""
  if heads_major:
    b, n_kv, n_group, n_q, head_dim = q.shape
    q = q.reshape(b, n_kv, n_group * n_q, head_dim)
  else:
    b, n_q, n_kv, n_group, head_dim = q.shape
    q = q.transpose(0, 2, 3, 1, 4).reshape(b, n_kv, n_group * n_q, head_dim)
  s = jnp.einsum("bkqd,bksd->bkqs" if heads_major else "bkqd,bskd->bkqs", q, k,
                 preferred_element_type=jnp.float32)
  return s.reshape(b, n_kv, n_group, n_q, -1)


def _weighted_sum(p_BxKxGxQxS, v, heads_major: bool = False) -> jnp.ndarray:
  """sum_s p v in float32: [B, K, G, Q, D] from v [B, S, K, D] (``heads_major``: [B, K, S, D]);
  p is cast to v's dtype first."""
  b, n_kv, n_group, n_q, n_s = p_BxKxGxQxS.shape
  p = p_BxKxGxQxS.astype(v.dtype).reshape(b, n_kv, n_group * n_q, n_s)
  out = jnp.einsum("bkqs,bksd->bkqd" if heads_major else "bkqs,bskd->bkqd", p, v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, n_kv, n_group, n_q, -1)


def logit_scale(hooks: Hooks, head_dim: int):
  """The factor of q . k in the logits: the encoding's logit scale over sqrt(Dh)."""
  return hooks.logit_scale / math.sqrt(head_dim)


def scale_queries(rot: Rotated, hooks: Hooks) -> Rotated:
  """``rot`` with every query rotation multiplied by ``logit_scale``, for
  ``block_scores(..., queries_scaled=True)``: once per query instead of once per pair."""
  scale = lambda q: None if q is None else q * jnp.asarray(logit_scale(hooks, q.shape[-1]), q.dtype)
  return rot._replace(q=scale(rot.q), q_far=scale(rot.q_far), remap_q=tuple(map(scale, rot.remap_q)))


def block_scores(rot: Rotated, q_meta: TokenMeta, k_meta: TokenMeta, hooks: Hooks,
                 soft_cap: float | None, *, queries_scaled: bool = False,
                 heads_major: bool = False) -> jnp.ndarray:
  """Unmasked float32 logits [B, K, G, Lq, Lk] for one block (``block_logits`` before the mask).

  ``rot`` holds the query rows of the block in q/q_far and its key rows in k/k_far;
  ``queries_scaled``: its queries already carry the logit scale (``scale_queries``);
  ``heads_major``: q/k are laid out as ``_scores(heads_major=True)`` takes them.
  """
  n_kv, n_group, head_dim = rot.q.shape[1:3] + rot.q.shape[4:] if heads_major else rot.q.shape[2:]
  _scores_of = functools.partial(_scores, heads_major=heads_major)
  scale = 1.0 if queries_scaled else logit_scale(hooks, head_dim)
  if hooks.remap is None:
    s = _scores_of(rot.q, rot.k) * scale
  else:  # each pair scored with the first remap rule whose condition holds
    qs, ks = (rot.q,) + tuple(rot.remap_q), (rot.k,) + tuple(rot.remap_k)
    rule_of_pair = pe_apply.remap_rule_index(hooks.remap, q_meta.positions, k_meta.positions)[:, None, None]
    s = _scores_of(qs[-1], ks[-1]) * scale
    for r, (q, k) in enumerate(zip(qs[:-1], ks[:-1])):
      s = jnp.where(rule_of_pair == r, _scores_of(q, k) * scale, s)
  if hooks.self_extend is not None:
    near = pe_apply.self_extend_use_normal(hooks.self_extend, q_meta.positions, k_meta.positions)
    s = jnp.where(near[:, None, None], s, _scores_of(rot.q_far, rot.k_far) * scale)
  if soft_cap is not None:
    s = soft_cap * jnp.tanh(s / soft_cap)
  if hooks.alibi_slopes is not None:
    bias = pe_apply.alibi_bias(hooks.alibi_slopes, q_meta.positions, k_meta.positions)
    s = s + bias.reshape(bias.shape[0], n_kv, n_group, *bias.shape[2:])
  return s


def block_logits(
    rot: Rotated, q_meta: TokenMeta, k_meta: TokenMeta, hooks: Hooks, soft_cap: float | None
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(masked float32 logits [B, K, G, Lq, Lk], allowed [B, 1, 1, Lq, Lk]) for one block."""
  s = block_scores(rot, q_meta, k_meta, hooks, soft_cap)
  mask = allowed(q_meta, k_meta, hooks.key_window)[:, None, None]
  return jnp.where(mask, s, NEG_INF), mask


def wholly_allowed(q_meta: TokenMeta, k_meta: TokenMeta, key_window: KeyWindow | None = None) -> jnp.ndarray:
  """bool []: every (query, key) pair of the block is allowed (what ``allowed`` would say of
  each), because every key precedes every query, all share one segment and one window, and
  every key is inside every query's key window (or a sink)."""
  one_value = lambda a, b: (a.min() == a.max()) & (b.min() == b.max()) & (a.min() == b.min())
  whole = ((k_meta.index.max() <= q_meta.index.min()) & one_value(q_meta.segments, k_meta.segments)
           & one_value(q_meta.windows, k_meta.windows))
  if key_window is not None:
    whole &= ((q_meta.index.max() - k_meta.index.min() < key_window.size)
              | (k_meta.positions.max() < key_window.sinks))
  return whole


# ----------------------------------------------------------------------------- reference


def reference(
    rot: Rotated, v_BxLxKxD, meta: TokenMeta, hooks: Hooks, *, soft_cap: float | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(out [B, L, H, Dh], probabilities float32 [B, H, L, L]) with the full logit matrix."""
  b, length, n_kv, n_group, head_dim = rot.q.shape
  logits, _ = block_logits(rot, meta, meta, hooks, soft_cap)
  probs = jax.nn.softmax(logits, axis=-1)
  out = _weighted_sum(probs, v_BxLxKxD).astype(v_BxLxKxD.dtype).transpose(0, 3, 1, 2, 4)
  heads = n_kv * n_group
  return out.reshape(b, length, heads, head_dim), probs.reshape(b, heads, length, length)


# ----------------------------------------------------------------------------- dot_product


def dot_product(
    rot: Rotated, v_BxLxKxD, meta: TokenMeta, hooks: Hooks, *, soft_cap: float | None = None
) -> jnp.ndarray:
  """out [B, L, H, Dh] through ``jax.nn.dot_product_attention`` (see the module docstring)."""
  if soft_cap is not None:
    raise ValueError("attention 'dot_product' cannot apply a logit soft cap; use 'reference' or 'chunked'")
  if hooks.remap is not None:
    raise ConfigError("attention 'dot_product' cannot merge relative-position remap rules (ReRoPE, "
                      "STRING, Dual Chunk Attention, StreamingLLM); use 'reference' or 'chunked'")
  b, length, n_kv, n_group, head_dim = rot.q.shape
  q = rot.q.reshape(b, length, n_kv * n_group, head_dim)
  mask = allowed(meta, meta, hooks.key_window)[:, None]  # [B, 1, L, L]
  bias = None
  if hooks.alibi_slopes is not None:
    bias = pe_apply.alibi_bias(hooks.alibi_slopes, meta.positions, meta.positions)
  scale = hooks.logit_scale / math.sqrt(head_dim)
  if hooks.self_extend is None:
    return jax.nn.dot_product_attention(q, rot.k, v_BxLxKxD, bias, mask, scale=scale, implementation="xla")
  near = pe_apply.self_extend_use_normal(hooks.self_extend, meta.positions, meta.positions)[:, None]
  zeros = jnp.zeros_like(rot.k)
  q2 = jnp.concatenate([q, rot.q_far.reshape(q.shape)], axis=-1)
  k2 = jnp.concatenate([jnp.concatenate([rot.k, zeros], -1), jnp.concatenate([zeros, rot.k_far], -1)], 1)
  v_pad = jnp.concatenate([v_BxLxKxD, jnp.zeros_like(v_BxLxKxD)], axis=-1)
  mask2 = jnp.concatenate([mask & near, mask & ~near], axis=-1)
  bias2 = None if bias is None else jnp.concatenate([bias, bias], axis=-1)
  out = jax.nn.dot_product_attention(
      q2, k2, jnp.concatenate([v_pad, v_pad], 1), bias2, mask2, scale=scale, implementation="xla"
  )
  return out[..., :head_dim]


# ----------------------------------------------------------------------------- chunked


def _to_blocks(x, n_blocks: int, chunk: int, fill):
  """[B, L, ...] -> [n_blocks, B, chunk, ...], padding the tail of L with ``fill``."""
  pad = n_blocks * chunk - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
  x = x.reshape(x.shape[0], n_blocks, chunk, *x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def chunked(
    rot: Rotated,
    v_BxLxKxD,
    meta: TokenMeta,
    hooks: Hooks,
    *,
    chunk_size: int,
    soft_cap: float | None = None,
) -> jnp.ndarray:
  """out [B, L, H, Dh] by flash-style blockwise attention; never forms an [L, L] array.

  Online softmax per query row over key blocks t: m_t = max(m_{t-1}, max_j s_j),
  l_t = l_{t-1} e^{m_{t-1} - m_t} + sum_j e^{s_j - m_t},
  acc_t = acc_{t-1} e^{m_{t-1} - m_t} + sum_j e^{s_j - m_t} v_j, out = acc / l.
  L need not be a multiple of ``chunk_size``: padded keys get a token index in every
  query's future, so causality hides them; padded query rows are dropped.
  """
  return chunked_cross(rot, meta, rot, v_BxLxKxD, meta, hooks, chunk_size=chunk_size, soft_cap=soft_cap)


def chunked_cross(
    q_rot: Rotated,
    q_meta: TokenMeta,
    k_rot: Rotated,
    v_BxSxKxD,
    k_meta: TokenMeta,
    hooks: Hooks,
    *,
    chunk_size: int,
    soft_cap: float | None = None,
) -> jnp.ndarray:
  """``chunked`` for queries (q/q_far of ``q_rot``, [B, Lq, ...]) against other keys and
  values (k/k_far of ``k_rot`` and v, [B, S, ...]): out [B, Lq, H, Dh].

  The masks read only the token metadata, so the query rows may be any subset of the
  keys' row in any order (a context-parallel shard). A key block is skipped when none of
  its pairs can be allowed (``needed``: wholly in the future, outside the key window, or in
  other segments or windows than every query of the block).

  The forward pass visits, for each query block, only the key blocks from its first to its
  last needed one (a loop with a data-dependent trip count: a causal row does about half
  the iterations of a fixed scan over every key block); the backward pass differentiates
  the same computation written as fixed-length scans, which reverse-mode needs. Both add
  the same blocks in the same order, so their outputs are equal.
  """
  return _chunked_cross(q_rot, q_meta, k_rot, v_BxSxKxD, k_meta, hooks, chunk_size, soft_cap)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunked_cross(q_rot, q_meta, k_rot, v, k_meta, hooks, chunk_size, soft_cap):
  return _blockwise(q_rot, q_meta, k_rot, v, k_meta, hooks, chunk_size, soft_cap, bounded=True)


def _chunked_cross_fwd(q_rot, q_meta, k_rot, v, k_meta, hooks, chunk_size, soft_cap):
  out = _blockwise(q_rot, q_meta, k_rot, v, k_meta, hooks, chunk_size, soft_cap, bounded=True)
  return out, (q_rot, q_meta, k_rot, v, k_meta, hooks)


def _chunked_cross_bwd(chunk_size, soft_cap, inputs, out_cotangent):
  scanned = lambda *args: _blockwise(*args, chunk_size, soft_cap, bounded=False)
  return jax.vjp(scanned, *inputs)[1](out_cotangent)


_chunked_cross.defvjp(_chunked_cross_fwd, _chunked_cross_bwd)


def _blockwise(q_rot: Rotated, q_meta: TokenMeta, k_rot: Rotated, v_BxSxKxD, k_meta: TokenMeta, hooks: Hooks,
               chunk_size: int, soft_cap: float | None, *, bounded: bool) -> jnp.ndarray:
  """The online-softmax attention of ``chunked_cross``; ``bounded``: loop over each query
  block's needed key blocks only (forward only), else scan every key block (differentiable)."""
  b, n_q, n_kv, n_group, head_dim = q_rot.q.shape
  n_k = k_rot.k.shape[1]
  # Scaling each query once saves a pass over every [C, C] block of logits.
  q_rot = scale_queries(q_rot, hooks)
  chunk = min(chunk_size, max(n_q, n_k))
  nq_blocks, nk_blocks = -(-n_q // chunk), -(-n_k // chunk)
  q_blocks_of = lambda x, fill=0: None if x is None else _to_blocks(x, nq_blocks, chunk, fill)
  k_blocks_of = lambda x, fill=0: None if x is None else _to_blocks(x, nk_blocks, chunk, fill)
  meta_blocks = lambda m, blocks: TokenMeta(blocks(m.index, _PAD_INDEX), blocks(m.positions),
                                            blocks(m.segments), blocks(m.windows))
  # Heads-major blocks (q [n, B, K, G, C, Dh], k/v [n, B, K, C, Dh]), so that the block
  # products inside the loops are plain batched matrix products with no transposes.
  q_major = lambda x: None if x is None else jnp.moveaxis(q_blocks_of(x), 2, 4)
  k_major = lambda x: None if x is None else jnp.moveaxis(k_blocks_of(x), 2, 3)
  q_blocks = (q_major(q_rot.q), q_major(q_rot.q_far), tuple(map(q_major, q_rot.remap_q)))
  kv_blocks = (k_major(k_rot.k), k_major(k_rot.k_far), tuple(map(k_major, k_rot.remap_k)),
               k_major(v_BxSxKxD))
  q_meta_blocks, k_meta_blocks = meta_blocks(q_meta, q_blocks_of), meta_blocks(k_meta, k_blocks_of)
  # Padded query rows carry _PAD_INDEX too; their key range must not widen the block's.
  q_last = lambda idx: jnp.where(idx == _PAD_INDEX, -1, idx).max()
  key_window = hooks.key_window

  def needed(q_meta, k_meta, last_query):
    """False when no pair of the block can be allowed: every key is in the future of, or
    outside the key window of, every query, or the blocks' segment ids or window ids (packed
    documents, parallel context windows, S2-Attn groups) have disjoint ranges, so no query
    shares one with any key. Its work is skipped. Padded slots hold id 0, which only widens
    a range (never a wrong skip)."""
    overlap = lambda a, b: (a.min() <= b.max()) & (b.min() <= a.max())
    need = ((k_meta.index.min() <= last_query) & overlap(q_meta.segments, k_meta.segments)
            & overlap(q_meta.windows, k_meta.windows))
    if key_window is not None:
      last_key = jnp.where(k_meta.index == _PAD_INDEX, -1, k_meta.index).max()
      in_window = q_meta.index.min() - last_key < key_window.size
      need &= in_window | (k_meta.positions.min() < key_window.sinks)
    return need

  def query_block(args):
    q, q_far, remap_q, q_meta = args
    last_query = q_last(q_meta.index)

    def key_block(carry, xs):
      k, k_far, remap_k, v, k_meta = xs

      rot = Rotated(q, k, q_far, k_far, remap_q, remap_k)

      def update(carry, masked: bool):
        m, l, acc = carry
        s = block_scores(rot, q_meta, k_meta, hooks, soft_cap, queries_scaled=True, heads_major=True)
        if masked:
          mask = allowed(q_meta, k_meta, key_window)[:, None, None]
          s = jnp.where(mask, s, NEG_INF)
        # else every pair is allowed: the same numbers without building and applying the mask
        m_new = jnp.maximum(m, s.max(axis=-1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None])
        if masked:  # a wholly masked row has m_new = NEG_INF, where exp(s - m_new) = 1
          p = jnp.where(mask, p, 0.0)
        l = l * correction + p.sum(axis=-1)
        return m_new, l, acc * correction[..., None] + _weighted_sum(p, v, heads_major=True)

      # 0: key block wholly in the future of every query of the block, or outside its key
      # window (skipped); 1: some pairs masked (the diagonal, segment or window edges); 2:
      # none masked, which is most blocks of a long window.
      branch = jnp.where(~needed(q_meta, k_meta, last_query), 0,
                         jnp.where(wholly_allowed(q_meta, k_meta, key_window), 2, 1))
      return jax.lax.switch(branch, [lambda c: c, lambda c: update(c, True), lambda c: update(c, False)],
                            carry), None

    stats = (b, n_kv, n_group, chunk)
    init = (jnp.full(stats, NEG_INF), jnp.zeros(stats), jnp.zeros(stats + (head_dim,)))
    key_xs = (*kv_blocks, k_meta_blocks)
    if bounded:
      # Only the key blocks from the first needed one to the last: the others would be
      # skipped by the switch anyway, but each costs a loop iteration and its slices.
      need = jax.vmap(lambda k_meta: needed(q_meta, k_meta, last_query))(k_meta_blocks)
      first = jnp.argmax(need)
      stop = jnp.where(need.any(), nk_blocks - jnp.argmax(need[::-1]), first)
      block_at = lambda j: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, j, keepdims=False), key_xs)
      _, l, acc = jax.lax.fori_loop(first, stop, lambda j, carry: key_block(carry, block_at(j))[0], init)
    else:
      (_, l, acc), _ = jax.lax.scan(key_block, init, key_xs)
    # Every real row sees at least itself; padded rows (l = 0) are dropped below.
    out = acc / jnp.where(l > 0, l, 1.0)[..., None]
    return jnp.moveaxis(out, 3, 1).astype(v_BxSxKxD.dtype)  # [B, C, K, G, Dh]

  # The scan form rematerialises each query block in the backward pass, so gradients stay
  # linear in memory.
  out = jax.lax.map(query_block if bounded else jax.checkpoint(query_block), (*q_blocks, q_meta_blocks))
  out = jnp.moveaxis(out, 0, 1).reshape(b, nq_blocks * chunk, n_kv * n_group, head_dim)
  return out[:, :n_q]
