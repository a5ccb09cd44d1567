"""Autoregressive generation with a key-value cache that keeps length-dependent encodings honest.

``generate(model, prompts, max_new_tokens)`` decodes a batch of token-id prompts greedily
(``temperature=0``) or by sampling, stopping each row at its first stop token. ``model``
is anything with ``config`` (ModelConfig), ``params`` and ``encoding``: the object
``rope_lab.interop.hf.load`` / ``gguf.load`` return, or a trained model wrapped in
:class:`Model`.

At every step the sequence so far has some length L, and the encoding is resolved at L,
as a forward pass over the whole sequence would resolve it (Dynamic NTK and Dynamic YaRN
change their frequencies with L; LongRoPE switches from short to long factors once L
passes its original length). The cache stores keys *before* rotation, so each step can
rotate them with the hooks in force. ``cache`` chooses what happens when the hooks at L
act differently on the cached positions than the hooks the cache was built with:

* ``"exact"`` (default): the cache is rebuilt from the whole sequence under the new hooks,
  so every step equals recomputing the whole sequence (the tokens of full recomputation,
  up to float rounding); static encodings never rebuild, LongRoPE rebuilds once at its
  switch, Dynamic NTK / YaRN rebuild at every step beyond their original length.
* ``"rerotate"``: cached keys are re-rotated with the new hooks but not recomputed. Exact
  for the first layer; deeper layers keep hidden states computed under older hooks. Cheap.
* ``"frozen"``: keys stay rotated as they were when computed (what caches that store
  rotated keys do; transformers issue #25104), so their effect can be measured.

Relative-position remap rules (ReRoPE, STRING, StreamingLLM, ...) rotate the cached keys
once per rule, and key windows (StreamingLLM's sinks and recent window, a model's sliding
window) mask the cache as the full forward masks the sequence, so "exact" and "rerotate"
match recomputation for them too; the cache still holds every token (StreamingLLM's
evicted keys are masked, not freed). "frozen" refuses remap rules.

Prompts of different lengths are decoded in groups of equal length (no padding, so each
row's encoding is resolved at its own length, as it would be alone).

``prefill(model, prefix, capacity)`` puts a shared prompt prefix (a long context) into the
cache once; ``generate_after`` and ``prefix_logits`` then continue it with one suffix each
(a question), each writing into its own copy of the cache, with the tokens and logits of
generating from the whole prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rope_lab import pe

from rope_lab.model import attention

from rope_lab.model import layer_scan
from rope_lab.errors import ConfigError, check
from rope_lab.model.skeleton import MLP, Dense, ModelConfig, Norm, stack_layers, token_meta
from rope_lab.pe import apply as pe_apply
from rope_lab.pe.rotary import cos_sin

CACHE_MODES = ("exact", "rerotate", "frozen")
# Prompts of at least this many tokens are prefilled with the chunked (memory-linear)
# attention: the dense [T, capacity] scores of a 16K-token prompt would take gigabytes a layer.
CHUNKED_PREFILL_FROM = 512
PREFILL_CHUNK = 256
CAPACITY_STEP = 128


@dataclasses.dataclass
class Model:
  """A model for ``generate``: its config, parameters and encoding."""

  config: ModelConfig
  params: dict
  encoding: pe.Encoding


# The cache: a dict of per-layer arrays [n_layers, B, S, K, Dh]: "k" un-rotated keys, "v"
# values; "k_rot" (and "k_far" for SelfExtend) keys rotated when written, read only in
# "frozen" mode.
Cache = dict


def _pad_rows(tables: pe.RotaryTables, rows: int) -> pe.RotaryTables:
  """``tables`` with zero coarse rows up to ``rows``, their static ``length`` raised to match."""
  pad = rows - tables.cos_coarse.shape[-2]
  if pad > 0:
    widths = [(0, 0)] * (tables.cos_coarse.ndim - 2) + [(0, pad), (0, 0)]
    tables = tables.replace(cos_coarse=jnp.pad(tables.cos_coarse, widths),
                            sin_coarse=jnp.pad(tables.sin_coarse, widths))
  return tables.replace(length=max(tables.length, _covered(tables)))


def _covered(tables: pe.RotaryTables) -> int:
  """Positions a coarse/fine table pair covers (its fine size may differ at another length)."""
  return tables.cos_coarse.shape[-2] * tables.fine_size


def resolve_hooks(cfg: ModelConfig, encoding: pe.Encoding, length: int, capacity: int) -> pe.Hooks:
  """The encoding's hooks at ``length``, coarse rotary rows zero-padded to cover ``capacity``.

  Padding keeps one table shape for a whole generation (one compilation, and static
  encodings compare equal from step to step); the padded rows are never read by a real
  token, because every position stays below ``length``. For the same reason the static
  bounds of the length checks (the hooks' ``seq_len``, the tables' ``length``) become
  ``capacity``: left at ``length`` they would recompile the model at every step. Remap
  rules with their own tables (Leaky ReRoPE) are padded to the positions those tables
  cover at ``capacity``.
  """
  resolve = lambda n: encoding.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=n)
  reach = max(capacity, encoding.max_rotary_position(capacity))
  widest = functools.cache(lambda: resolve(capacity))  # only remap rules with their own tables need it

  def pad(hooks: pe.Hooks, layer: int | None) -> pe.Hooks:
    hooks = hooks.replace(seq_len=max(hooks.seq_len, capacity))
    if hooks.rotary is not None:
      hooks = hooks.replace(rotary=_pad_rows(hooks.rotary, -(-reach // hooks.rotary.fine_size)))
    if hooks.remap is not None and any(rule.rotary is not None for rule in hooks.remap):
      hooks = hooks.replace(remap=tuple(
          rule if rule.rotary is None else rule.replace(rotary=_pad_rows(rule.rotary, -(-_covered(wide.rotary)
                                                                                 // rule.rotary.fine_size)))
          for rule, wide in zip(hooks.remap, (widest() if layer is None else widest().layers[layer]).remap)))
    return hooks

  hooks = resolve(length)
  if hooks.layers is not None:  # a per-layer encoding: each layer's tables cover the buffer too
    hooks = hooks.replace(layers=tuple(pad(h, i) for i, h in enumerate(hooks.layers)))
  return pad(hooks, None)


@functools.partial(jax.jit, static_argnums=(3,))
def _angles_agree(a: pe.RotaryTables, b: pe.RotaryTables, n, capacity: int):
  positions = jnp.arange(capacity, dtype=jnp.int32)
  inside = (positions < n)[:, None]
  (cos_a, sin_a), (cos_b, sin_b) = cos_sin(a, positions), cos_sin(b, positions)
  return jnp.all(jnp.where(inside, (cos_a == cos_b) & (sin_a == sin_b), True))


def same_on_prefix(a: pe.Hooks, b: pe.Hooks, n: int) -> bool:
  """True when hooks ``a`` and ``b`` act identically on tokens [0, n): same rotation angles
  at every position those tokens may be rotated at (``n`` should already include positions
  a position map or SelfExtend's grouped queries reach), same scales, maps and biases."""
  if (a.rotary is None) != (b.rotary is None):
    return False
  if a.rotary is not None:
    shape = lambda t: jax.tree_util.tree_map(jnp.shape, t)
    if shape(a.rotary) != shape(b.rotary) or a.rotary.layout != b.rotary.layout:
      return False
    covered = a.rotary.cos_coarse.shape[-2] * a.rotary.fine_size
    if not bool(_angles_agree(a.rotary, b.rotary, jnp.int32(min(n, covered)), covered)):
      return False
  rest = lambda h: jax.tree_util.tree_flatten(h.replace(rotary=None))
  (leaves_a, tree_a), (leaves_b, tree_b) = rest(a), rest(b)
  return tree_a == tree_b and all(
      np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))


# ----------------------------------------------------------------------------- one cached forward


def _layer_attention(cfg: ModelConfig, p: dict, x_BxTxD, cache: Cache, start, hooks: pe.Hooks,
                     meta_new: attention.TokenMeta, meta_all: attention.TokenMeta, frozen: bool):
  """Attention of T new tokens over one layer's cache (positions < start) and themselves.

  ``cache`` holds this layer's arrays [B, S, K, Dh]; it is updated in place (the dict)."""
  h, k, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  proj = lambda name, heads: Dense((heads, dh), ("embed", None, "head_dim"), use_bias=cfg.qkv_bias,
                                   dtype=cfg.dtype).apply({"params": p[name]}, x_BxTxD)
  q, key, value = proj("q", h), proj("k", k), proj("v", k)
  b, t = q.shape[:2]
  write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), start, axis=1)
  cache["k"] = write(cache["k"], key)
  cache["v"] = write(cache["v"], value)
  q_pos, all_pos = meta_new.positions, meta_all.positions
  rot = attention.rotate_cross(hooks, q, cache["k"], q_pos, all_pos)
  if frozen:  # keys rotated once, when written, with the hooks of that step
    new = lambda rotated: jax.lax.dynamic_slice_in_dim(rotated, start, t, axis=1)
    cache["k_rot"] = write(cache["k_rot"], new(rot.k))
    rot = rot._replace(k=cache["k_rot"])
    if rot.k_far is not None:
      cache["k_far"] = write(cache["k_far"], new(rot.k_far))
      rot = rot._replace(k_far=cache["k_far"])
  if t >= CHUNKED_PREFILL_FROM:  # a long prompt: never form its [T, capacity] scores
    out = attention.chunked_cross(rot, meta_new, rot, cache["v"], meta_all, hooks,
                                  chunk_size=PREFILL_CHUNK, soft_cap=cfg.logit_soft_cap)
    return Dense((cfg.d_model,), ("heads", "head_dim", "embed"), n_in=2, dtype=cfg.dtype).apply(
        {"params": p["o"]}, out.astype(cfg.dtype))
  logits, _ = attention.block_logits(rot, meta_new, meta_all, hooks, cfg.logit_soft_cap)
  probs = jax.nn.softmax(logits, axis=-1).astype(cache["v"].dtype)  # [B, K, G, T, S]
  out = jnp.einsum("bkgts,bskd->btkgd", probs, cache["v"], preferred_element_type=jnp.float32)
  out = out.reshape(b, t, h, dh).astype(cfg.dtype)
  return Dense((cfg.d_model,), ("heads", "head_dim", "embed"), n_in=2, dtype=cfg.dtype).apply(
      {"params": p["o"]}, out)


def cached_forward(cfg: ModelConfig, params: dict, tokens_BxT, cache: Cache, start, hooks: pe.Hooks,
                   frozen: bool = False, last=None, layers: layer_scan.Stacked | None = None):
  """(float32 logits [B, V] of new token ``last`` (default the final one), updated cache).

  The T new tokens sit at positions start .. start + T - 1 and attend to the cache below
  ``start`` and to each other; their un-rotated keys and values are written into it.
  ``layers``: the blocks' parameters as ``stack_layers`` arranges them (made once per
  generation, so scanned decode steps do not copy the weights); None: from ``params``.
  """
  b, t = tokens_BxT.shape
  capacity = cache["k"].shape[2]
  all_pos = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (b, capacity))
  # Token index drives causality: cache slots at or beyond start + T are in every new token's future.
  meta_all, float_pos = token_meta(hooks, all_pos, None, segment_masking=False, rng=None)
  take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, t, axis=1)
  meta_new = attention.TokenMeta(*(take(x) for x in meta_all))
  embedding = params["embed"]["embedding"]
  x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype).apply({"params": params["embed"]}, tokens_BxT)
  absolute = pe_apply.absolute_embedding(hooks, take(float_pos), params.get("pos_embed"))
  if absolute is not None:
    x = x + absolute.astype(cfg.dtype)
  norm = lambda scope, y: Norm(cfg.norm, cfg.norm_eps, cfg.dtype).apply({"params": scope}, y)

  def layer(i, x, p, layer_cache):
    layer_cache = dict(layer_cache)
    layer_hooks = pe_apply.with_sliding_window(pe_apply.hooks_for_layer(hooks, i), cfg.sliding_window)
    x = x + _layer_attention(cfg, p["attn"], norm(p["attn_norm"], x), layer_cache, start, layer_hooks, meta_new,
                             meta_all, frozen)
    x = x + MLP(cfg).apply({"params": p["mlp"]}, norm(p["mlp_norm"], x))
    return x, layer_cache

  if layers is None:
    layers = stack_layers(cfg, params, hooks)
  x, cache = layer_scan.run_layers(layer, x, layers, dict(cache))
  last = norm(params["final_norm"], x[:, -1] if last is None else jnp.take(x, last, axis=1))
  if cfg.tied_embeddings:
    logits = jnp.dot(last, embedding.astype(cfg.dtype).T, preferred_element_type=jnp.float32)
  else:
    logits = jnp.dot(last, params["lm_head"]["kernel"].astype(cfg.dtype), preferred_element_type=jnp.float32)
  return logits, cache


def empty_cache(cfg: ModelConfig, batch: int, capacity: int, hooks: pe.Hooks) -> Cache:
  shape = (cfg.n_layers, batch, capacity, cfg.n_kv_heads, cfg.head_dim)
  cache = Cache(k=jnp.zeros(shape, cfg.dtype), v=jnp.zeros(shape, cfg.dtype), k_rot=jnp.zeros(shape, cfg.dtype))
  if hooks.self_extend is not None:
    cache["k_far"] = jnp.zeros(shape, cfg.dtype)
  return cache


@functools.lru_cache(maxsize=32)
def _compiled(cfg: ModelConfig, frozen: bool, donate: bool = True):
  def step(params, layers, tokens, cache, start, hooks, last):
    return cached_forward(cfg, params, tokens, dict(cache), start, hooks, frozen, last, layers)
  # A donated cache is updated in place; a prefix's cache, read by several continuations, is not donated.
  return jax.jit(step, donate_argnums=(3,) if donate else ())


# ----------------------------------------------------------------------------- generation


def _next_token(logits_BxV, temperature: float, rng):
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1), rng
  rng, key = jax.random.split(rng)
  return jax.random.categorical(key, logits_BxV / temperature, axis=-1), rng


def _capacity(tokens: int) -> int:
  """Buffers in whole CAPACITY_STEP units: prompts of nearby lengths share compiled programs."""
  return -(-tokens // CAPACITY_STEP) * CAPACITY_STEP


@dataclasses.dataclass(frozen=True)
class _State:
  """A sequence in a buffer of ``capacity`` slots whose first ``length`` tokens the cache holds,
  computed under ``hooks``; ``logits`` (float32 [B, V], or [B, A, V] at chosen positions) are
  those of the last forward."""

  sequence: np.ndarray  # int64 [B, capacity]
  length: int
  logits: jax.Array
  cache: Cache
  hooks: pe.Hooks
  layers: layer_scan.Stacked  # the blocks' weights, stacked once per generation
  cache_mode: str


def _full_prefill(model, sequence: np.ndarray, length: int, hooks: pe.Hooks, layers, frozen: bool, last):
  # The whole buffer in one shape (one compilation): slots from ``length`` on hold zeros,
  # in every real token's future, and are overwritten before any query can see them.
  b, capacity = sequence.shape
  return _compiled(model.config, frozen)(model.params, layers, jnp.asarray(sequence, jnp.int32),
                                         empty_cache(model.config, b, capacity, hooks), jnp.int32(0), hooks, last)


def _start(model, prompts_BxP: np.ndarray, capacity: int, cache_mode: str) -> _State:
  """The prompts prefilled in a buffer of ``capacity`` slots."""
  cfg, encoding = model.config, model.encoding
  b, prompt_len = prompts_BxP.shape
  sequence = np.zeros((b, capacity), np.int64)
  sequence[:, :prompt_len] = prompts_BxP
  hooks = resolve_hooks(cfg, encoding, prompt_len, capacity)
  if cache_mode == "frozen" and hooks.remap is not None:
    raise ConfigError(f"generate: cache='frozen' stores keys rotated once, which cannot carry the relative-position "
                      f"remap rules of encoding {encoding.name!r} (several rotations per pair); use cache='exact' or 'rerotate'")
  layers = stack_layers(cfg, model.params, hooks)
  logits, cache = _full_prefill(model, sequence, prompt_len, hooks, layers, cache_mode == "frozen",
                                jnp.int32(prompt_len - 1))
  return _State(sequence, prompt_len, logits, cache, hooks, layers, cache_mode)


def _extend(model, state: _State, tokens_BxT: np.ndarray, *, donate: bool, last=None, padded: int = 0) -> _State:
  """``state`` with T more tokens in the cache; the logits of the last one, or of new tokens
  ``last`` (int32 [A], offsets among the T). ``donate=False`` leaves ``state``'s cache usable.
  ``padded`` zero tokens follow the T in the same forward (one program for nearby T); like
  the buffer's tail, they sit in every later token's future and are overwritten first."""
  cfg, encoding = model.config, model.encoding
  t = tokens_BxT.shape[1]
  sequence = state.sequence.copy()
  length = state.length + t
  sequence[:, state.length:length] = tokens_BxT
  hooks = resolve_hooks(cfg, encoding, length, sequence.shape[1])
  reach = max(state.length, encoding.max_rotary_position(state.length))
  frozen = state.cache_mode == "frozen"
  last = jnp.int32(t - 1) if last is None else jnp.asarray(last, jnp.int32)
  if state.cache_mode == "exact" and not same_on_prefix(hooks, state.hooks, reach):
    # The hooks moved on cached tokens: recompute them all.
    logits, cache = _full_prefill(model, sequence, length, hooks, state.layers, frozen, state.length + last)
  else:
    tokens = sequence[:, state.length:length + padded]
    logits, cache = _compiled(cfg, frozen, donate)(model.params, state.layers, jnp.asarray(tokens, jnp.int32),
                                                   state.cache, jnp.int32(state.length), hooks, last)
  return dataclasses.replace(state, sequence=sequence, length=length, logits=logits, cache=cache, hooks=hooks)


def _decode(model, state: _State, max_new_tokens: int, temperature: float, rng, stop: set[int],
            donate: bool = True) -> np.ndarray:
  """Up to ``max_new_tokens`` tokens after ``state`` (each row until its stop token);
  ``donate=False``: ``state``'s cache stays usable."""
  begin, b = state.length, state.sequence.shape[0]
  done = np.zeros(b, bool)
  for _ in range(max_new_tokens):
    token, rng = _next_token(state.logits, temperature, rng)
    token = np.asarray(token)[:, None]
    done |= np.isin(token[:, 0], list(stop))
    if done.all() or state.length + 1 == begin + max_new_tokens:
      return np.concatenate([state.sequence[:, begin:state.length], token], axis=1)
    state = _extend(model, state, token, donate=donate or state.length > begin)
  return state.sequence[:, begin:state.length]


def _generate_group(model, prompts_BxP: np.ndarray, max_new_tokens: int, temperature: float, rng,
                    stop: set[int], cache_mode: str) -> np.ndarray:
  state = _start(model, prompts_BxP, _capacity(prompts_BxP.shape[1] + max_new_tokens), cache_mode)
  return _decode(model, state, max_new_tokens, temperature, rng, stop)


def _check_ids(model, where: str, ids) -> np.ndarray:
  ids, vocab = np.asarray(ids), model.config.vocab_size
  # Integer ids only: float ids would otherwise be truncated to other tokens without a word.
  integral = ids.size == 0 or np.issubdtype(ids.dtype, np.integer)
  check(ids.ndim == 1 and ids.size >= 1 and integral and ids.min() >= 0 and ids.max() < vocab, where,
        f"token ids in [0, {vocab}) (a non-empty list of ints)",
        f"{ids.dtype} ids from {ids.min()} to {ids.max()}" if ids.size else [])
  return ids.astype(np.int64)


def generate(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
             rng: jax.Array | None = None, stop_tokens: Sequence[int] = (), cache: str = "exact") -> list[list[int]]:
  """New tokens for each prompt (ending at and including its first stop token, if any).

  ``temperature`` 0 is greedy decoding; above 0, sampling from softmax(logits / T) with
  ``rng`` (required then). ``cache``: one of ``CACHE_MODES`` (module docstring).
  """
  check(cache in CACHE_MODES, "generate: cache", f"one of {CACHE_MODES}", cache)
  check(isinstance(max_new_tokens, int) and max_new_tokens >= 1, "generate: max_new_tokens", "an int >= 1",
        max_new_tokens)
  check(isinstance(temperature, (int, float)) and temperature >= 0 and math.isfinite(temperature),
        "generate: temperature", "a finite number >= 0", temperature)
  if temperature > 0 and rng is None:
    raise ConfigError("generate: temperature > 0 samples and needs an rng (jax.random.key(seed))")
  check(len(prompts) >= 1 and all(len(p) >= 1 for p in prompts), "generate: prompts",
        "a non-empty list of non-empty token lists", [len(p) for p in prompts])
  for i, prompt in enumerate(prompts):
    _check_ids(model, f"generate: prompts[{i}]", prompt)
  rng = jax.random.key(0) if rng is None else rng
  stop = {int(s) for s in stop_tokens}
  out: list[list[int]] = [[] for _ in prompts]
  by_length: dict[int, list[int]] = {}
  for i, prompt in enumerate(prompts):
    by_length.setdefault(len(prompt), []).append(i)
  for length in sorted(by_length):
    rows = by_length[length]
    rng, group_rng = jax.random.split(rng)
    new = _generate_group(model, np.asarray([list(prompts[i]) for i in rows], np.int64), max_new_tokens,
                          float(temperature), group_rng, stop, cache)
    for row, i in enumerate(rows):
      out[i] = _until_stop(new[row], stop)
  return out


def _until_stop(tokens, stop: set[int]) -> list[int]:
  tokens = [int(t) for t in tokens]
  return tokens[:next((j + 1 for j, t in enumerate(tokens) if t in stop), len(tokens))]


# ----------------------------------------------------------------------------- one prefix, many continuations

# Continuations are fed in whole SUFFIX_STEP units (zero-padded): nearby lengths share one program.
SUFFIX_STEP = 32


@dataclasses.dataclass(frozen=True)
class Prefix:
  """A prompt's first part in the cache, prefilled once (``prefill``). ``prefix_logits`` and
  ``generate_after`` continue it with a suffix each; each continuation writes into a copy of
  the cache (its arrays are never donated), so the prefix serves any number of them."""

  state: _State

  @property
  def length(self) -> int:
    return self.state.length

  @property
  def capacity(self) -> int:
    return self.state.sequence.shape[1]


def prefill(model: Any, prefix: Sequence[int], capacity: int, *, cache: str = "exact") -> Prefix:
  """``prefix`` prefilled in a cache of at least ``capacity`` tokens: the longest prefix, suffix
  and generated tokens any continuation will hold."""
  check(cache in CACHE_MODES, "prefill: cache", f"one of {CACHE_MODES}", cache)
  ids = _check_ids(model, "prefill: prefix", prefix)
  check(isinstance(capacity, int) and capacity > len(ids), "prefill: capacity", f"an int above the prefix's {len(ids)} tokens",
        capacity)
  return Prefix(_start(model, ids[None], _capacity(capacity), cache))


def _continue(model, prefix: Prefix, suffix: Sequence[int], last=None) -> _State:
  ids = _check_ids(model, "prefix continuation: suffix", suffix)
  room = prefix.capacity - prefix.length
  check(len(ids) <= room, "prefix continuation: suffix", f"at most the {room} tokens the prefix's cache has left",
        len(ids))
  padded = min(-(-len(ids) // SUFFIX_STEP) * SUFFIX_STEP, room) - len(ids)
  return _extend(model, prefix.state, ids[None], donate=False, last=last, padded=padded)


def prefix_logits(model: Any, prefix: Prefix, suffix: Sequence[int], positions: Sequence[int]) -> np.ndarray:
  """float32 [len(positions), V]: the next-token logits after each of ``suffix``'s ``positions``
  (offsets into the suffix), the suffix following ``prefix``: one forward over the suffix.

  As a forward over prefix + suffix computes them (``generate`` would see the same logits);
  in "exact" mode an encoding whose hooks move on the prefix's tokens at the longer length
  (Dynamic NTK / YaRN beyond their original length) recomputes the whole sequence instead."""
  positions = np.asarray(positions, np.int64)
  check(positions.ndim == 1 and positions.size >= 1 and positions.min() >= 0 and positions.max() < len(suffix),
        "prefix_logits: positions", f"offsets in [0, {len(suffix)})", positions.tolist())
  bucket = -(-len(positions) // SUFFIX_STEP) * SUFFIX_STEP  # one program for nearby counts
  index = np.concatenate([positions, np.full(bucket - len(positions), positions[-1])])
  return np.asarray(_continue(model, prefix, suffix, last=index).logits)[0, :len(positions)]


def generate_after(model: Any, prefix: Prefix, suffix: Sequence[int], max_new_tokens: int, *,
                   temperature: float = 0.0, rng: jax.Array | None = None,
                   stop_tokens: Sequence[int] = ()) -> list[int]:
  """``generate`` of prompt prefix + ``suffix``, continuing the prefilled ``prefix``."""
  check(isinstance(max_new_tokens, int) and max_new_tokens >= 1, "generate_after: max_new_tokens", "an int >= 1",
        max_new_tokens)
  check(len(suffix) + max_new_tokens <= prefix.capacity - prefix.length, "generate_after: suffix + max_new_tokens",
        f"at most the {prefix.capacity - prefix.length} tokens the prefix's cache has left", len(suffix) + max_new_tokens)
  if temperature > 0 and rng is None:
    raise ConfigError("generate_after: temperature > 0 samples and needs an rng (jax.random.key(seed))")
  stop = {int(s) for s in stop_tokens}
  state = _continue(model, prefix, suffix)
  return _until_stop(_decode(model, state, max_new_tokens, float(temperature),
                             jax.random.key(0) if rng is None else rng, stop)[0], stop)
