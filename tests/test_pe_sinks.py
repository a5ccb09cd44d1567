"""StreamingLLM (Xiao et al. 2023) against its own procedure, built token by token.

The outside reference is a small numpy transcription of mit-han-lab/streaming-llm's
evaluation loop (``examples/eval_long_ppl.py`` with ``StartRecentKVCache`` and the Llama
``pos_shift`` attention): feed one token, append its un-rotated key and value to the
cache, rotate the cached keys at their places 0..n-1 in the cache and the query at n - 1
(the past length, as transformers' position_ids), softmax, then trim the cache to the first
``start_size`` and the last ``recent_size`` entries. rope_lab evaluates the whole
sequence at once with a key window and remap rules; both must give the same outputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab import pe

from rope_lab.model import attention

from rope_lab.model import generate as gen
from rope_lab.errors import ConfigError
from rope_lab.model.skeleton import ModelConfig, Transformer, init_params, token_meta


HEAD_DIM, N_HEADS, N_KV = 8, 4, 2
BASE = 1e5  # SmolLM2's base, as the real-model study loads it


def rotate_half(x, position):
  """Llama's rotate-half RoPE at one integer position, float64."""
  inv_freq = 1.0 / BASE ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
  angles = np.concatenate([position * inv_freq] * 2)
  half = HEAD_DIM // 2
  rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * np.cos(angles) + rotated * np.sin(angles)


def streaming_attention(q_LxHxD, k_LxKxD, v_LxKxD, start_size, recent_size):
  """The reference's token-by-token loop with a start+recent KV cache: out [L, H, D]."""
  length = q_LxHxD.shape[0]
  group = N_HEADS // N_KV
  cache_k, cache_v, out = [], [], np.zeros_like(q_LxHxD)
  for t in range(length):
    cache_k.append(k_LxKxD[t])
    cache_v.append(v_LxKxD[t])
    n = len(cache_k)
    keys = np.stack([rotate_half(key, place) for place, key in enumerate(cache_k)])  # [n, K, D]
    values = np.stack(cache_v)
    query = rotate_half(q_LxHxD[t], n - 1)  # [H, D]
    for h in range(N_HEADS):
      scores = keys[:, h // group] @ query[h] / np.sqrt(HEAD_DIM)
      weights = np.exp(scores - scores.max())
      out[t, h] = (weights / weights.sum()) @ values[:, h // group]
    if n > start_size + recent_size:  # StartRecentKVCache.__call__ after the step
      cache_k = cache_k[:start_size] + cache_k[n - recent_size:]
      cache_v = cache_v[:start_size] + cache_v[n - recent_size:]
  return out


@functools.partial(jax.jit, static_argnames=("implementation",))
def _attend(q, k, v, hooks, implementation):
  # Jitted: one compilation per case, where eager calls compile every operation separately.
  positions = jnp.arange(q.shape[1], dtype=jnp.int32)[None]
  meta, _ = token_meta(hooks, positions, None, segment_masking=False, rng=None)
  return attention.attend(q, k, v, meta, hooks, implementation=implementation, chunk_size=8)


def rope_lab_attention(encoding, q, k, v, implementation):
  length = q.shape[0]
  hooks = encoding.hooks(head_dim=HEAD_DIM, n_heads=N_HEADS, d_model=HEAD_DIM * N_HEADS, seq_len=length)
  as_jnp = lambda x: jnp.asarray(x[None], jnp.float32)
  out = _attend(as_jnp(q), as_jnp(k), as_jnp(v), hooks, implementation)
  return np.asarray(out[0], np.float64)


CASES = [(4, 6, 30), (1, 10, 27), (0, 5, 19), (3, 40, 24)]  # sinks, window, length (the last: never trims)


@pytest.mark.parametrize("implementation", ["reference", "chunked", "dot_product", "fused"])
@pytest.mark.parametrize("sinks,window,length", CASES)
def test_full_sequence_equals_the_streaming_cache(implementation, sinks, window, length):
  rng = np.random.default_rng(sinks * 100 + window)
  # Large q/k so attention is sharp and a wrong position or mask shows.
  q = rng.normal(size=(length, N_HEADS, HEAD_DIM)) * 2.0
  k = rng.normal(size=(length, N_KV, HEAD_DIM)) * 2.0
  v = rng.normal(size=(length, N_KV, HEAD_DIM))
  expected = streaming_attention(q, k, v, sinks, window)
  enc = pe.make("streaming_llm", sinks=sinks, window=window, base=BASE)
  got = rope_lab_attention(enc, q, k, v, implementation)
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
  if sinks + window < length - 1:  # the cache trimmed: plain RoPE differs
    plain = rope_lab_attention(pe.make("rope", base=BASE), q, k, v, "reference")
    assert np.abs(plain - expected).max() > 1e-2


def test_window_without_sinks_equals_a_sliding_window_of_one_more_token():
  """sinks=0: the same mask as ModelConfig.sliding_window = window + 1 (transformers' W
  counts the query itself), with plain RoPE distances."""
  rng = np.random.default_rng(7)
  length, window = 21, 5
  q, k, v = (rng.normal(size=(length, n, HEAD_DIM)) for n in (N_HEADS, N_KV, N_KV))
  from rope_lab.pe import apply as pe_apply
  hooks = pe.make("rope", base=BASE).hooks(head_dim=HEAD_DIM, n_heads=N_HEADS, d_model=32, seq_len=length)
  hooks = pe_apply.with_sliding_window(hooks, window + 1)
  meta, _ = token_meta(hooks, jnp.arange(length, dtype=jnp.int32)[None], None, segment_masking=False, rng=None)
  as_jnp = lambda x: jnp.asarray(x[None], jnp.float32)
  out = attention.attend(as_jnp(q), as_jnp(k), as_jnp(v), meta, hooks, implementation="reference")
  np.testing.assert_allclose(np.asarray(out[0]), streaming_attention(q, k, v, 0, window), atol=2e-5)


def test_parameters_are_checked():
  with pytest.raises(ConfigError, match="window"):
    pe.make("streaming_llm")
  with pytest.raises(ConfigError, match="window"):
    pe.make("streaming_llm", window=0)
  with pytest.raises(ConfigError, match="sinks"):
    pe.make("streaming_llm", window=8, sinks=-1)


CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, mlp_dim=64, attention="reference")


def test_generation_equals_the_full_forward_pass():
  """Cached greedy decoding under StreamingLLM picks, at every step, the argmax of the full
  forward pass over the sequence so far. The encoding does not change with the length and
  the model is causal, so one forward over the final sequence holds every step's logits."""
  enc = pe.make("streaming_llm", sinks=2, window=3)
  hooks = enc.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=1)
  params = jax.tree_util.tree_map(lambda x: x * 8 if x.ndim >= 2 else x, init_params(CFG, hooks, jax.random.key(0)))
  prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 7, 6, 5, 4, 3, 2]]
  new = 8
  got = gen.generate(gen.Model(CFG, params, enc), prompts, new)
  sequence = np.asarray([p + g[:-1] for p, g in zip(prompts, got)], np.int32)
  hooks = enc.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=sequence.shape[1])
  logits = np.asarray(jax.jit(lambda p, t, h: Transformer(CFG).apply({"params": p}, t, hooks=h))(
      params, sequence, hooks))
  assert [len(g) for g in got] == [new, new]
  assert np.argmax(logits[:, len(prompts[0]) - 1:], axis=-1).tolist() == got
  with pytest.raises(ConfigError, match="streaming_llm"):
    gen.generate(gen.Model(CFG, params, enc), prompts, 2, cache="frozen")
