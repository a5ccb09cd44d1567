"""Cached generation under relative-position remaps, query scales and a chunked prefill.

Outside reference: one plain forward pass over the finished sequence (no cache). For
encodings whose hooks do not change with the length, the greedy token at step j must be
the argmax of that forward's logits at the position before it, so a whole continuation is
checked with one forward and one compilation.
"""

import jax
import numpy as np
import pytest

from rope_lab.model import generate as gen
from rope_lab import pe
from rope_lab.errors import ConfigError
from rope_lab.model.skeleton import ModelConfig, Transformer, init_params


CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, attention="reference")
ORIGINAL = 12
ENCODINGS = {
    "rerope": pe.make("rerope", window=5),
    "leaky_rerope": pe.make("leaky_rerope", window=5, leak=4.0),
    "string": pe.make("string", shifted_offset=9, local_value=3),
    "dual_chunk": pe.make("dual_chunk", original_max_position_embeddings=ORIGINAL, chunk_size=6, local_window=2),
    "logn_static": pe.make("logn", original_max_position_embeddings=ORIGINAL, dynamic_ntk="none"),
    "self_extend": pe.make("self_extend", group_size=2, window=6, original_max_position_embeddings=ORIGINAL),
}
# Longer than ORIGINAL (remaps are active), and 17..25 tokens: the rotary tables keep one
# fine size (8 for 17..64 positions), so prefill and decode compile once each.
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2]
NEW = 8
# Jitted: one compilation per sequence length, where the eager forward compiles each of its
# hundred operations separately.
FORWARD = jax.jit(lambda p, t, h: Transformer(CFG).apply({"params": p}, t, hooks=h))


@pytest.fixture(scope="module")
def params():
  hooks = pe.make("rope").hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=1)
  p = init_params(CFG, hooks, jax.random.key(1))
  return jax.tree_util.tree_map(lambda x: x * 8 if x.ndim >= 2 else x, p)


def forward_argmax(params, encoding, tokens):
  hooks = encoding.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=len(tokens))
  logits = FORWARD(params, np.asarray([tokens], np.int32), hooks)
  return np.asarray(np.argmax(logits[0], axis=-1))


def consistent_with_forward(params, encoding, prompt, new):
  predicted = forward_argmax(params, encoding, prompt + new)
  return [int(t) for t in predicted[len(prompt) - 1:-1]] == new


@pytest.mark.parametrize("name,cache", [(name, "exact") for name in sorted(ENCODINGS)] +
                         [("leaky_rerope", "rerotate"), ("dual_chunk", "rerotate")])
def test_generation_follows_the_full_forward(params, name, cache):
  encoding = ENCODINGS[name]
  new = gen.generate(gen.Model(CFG, params, encoding), [PROMPT], NEW, cache=cache)[0]
  assert len(new) == NEW
  assert consistent_with_forward(params, encoding, PROMPT, new)


@pytest.mark.parametrize("name", ["leaky_rerope"])
def test_chunked_prefill_gives_the_same_tokens(params, name, monkeypatch):
  encoding = ENCODINGS[name]
  dense = gen.generate(gen.Model(CFG, params, encoding), [PROMPT], NEW)[0]
  monkeypatch.setattr(gen, "CHUNKED_PREFILL_FROM", 4)
  monkeypatch.setattr(gen, "PREFILL_CHUNK", 8)  # blocks smaller than the prompt, one partly padded
  gen._compiled.cache_clear()
  try:
    chunked = gen.generate(gen.Model(CFG, params, encoding), [PROMPT], NEW)[0]
  finally:
    gen._compiled.cache_clear()
  assert chunked == dense


def test_frozen_cache_refuses_remap_rules(params):
  with pytest.raises(ConfigError, match="frozen"):
    gen.generate(gen.Model(CFG, params, ENCODINGS["rerope"]), [PROMPT], 2, cache="frozen")
