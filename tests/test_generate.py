"""Cached generation equals recomputing the whole sequence at every step, token for token.

The reference is the plain forward pass (``Transformer.apply`` over the whole sequence
with the encoding resolved at its length), argmax at the last position, one token at a
time: exactly what "recompute everything" means, with no cache anywhere. (Its input is
zero-padded to one length so it compiles once; padding sits after the last position,
which causal attention never lets it reach.)
"""

import jax
import numpy as np
import pytest

from rope_lab import generate as gen
from rope_lab import pe
from rope_lab.errors import ConfigError
from rope_lab.model import ModelConfig, Transformer, init_params

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, attention="reference")
ORIGINAL = 12  # the encodings' original length: generation runs from 8 to 24 tokens, across it
PAIRS = CFG.head_dim // 2
ENCODINGS = {
    "dynamic_ntk": pe.make("dynamic_ntk", factor=4.0, original_max_position_embeddings=ORIGINAL),
    "dynamic_yarn": pe.make("dynamic_yarn", original_max_position_embeddings=ORIGINAL),
    "longrope": pe.make("longrope", short_factor=list(np.linspace(1.0, 1.5, PAIRS)),
                        long_factor=list(np.linspace(1.0, 8.0, PAIRS)), factor=4.0,
                        original_max_position_embeddings=ORIGINAL),
    "self_extend": pe.make("self_extend", group_size=2, window=6, original_max_position_embeddings=ORIGINAL),
    "rope": pe.make("rope"),
}
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 7, 6, 5, 4, 3, 2]]  # one batch of two rows
NEW = 16
FORWARD = jax.jit(lambda p, t, h: Transformer(CFG).apply({"params": p}, t, hooks=h))


@pytest.fixture(scope="module")
def params():
  hooks = pe.make("rope").hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=1)
  p = init_params(CFG, hooks, jax.random.key(0))
  # Larger weights than the init so that attention is sharp and positions matter.
  return jax.tree_util.tree_map(lambda x: x * 8 if x.ndim >= 2 else x, p)


def recompute(params, encoding, prompt, n):
  seq = list(prompt)
  for _ in range(n):
    hooks = encoding.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=len(seq))
    padded = np.zeros((1, len(prompt) + n), np.int32)
    padded[0, :len(seq)] = seq
    seq.append(int(np.argmax(FORWARD(params, padded, hooks)[0, len(seq) - 1])))
  return seq[len(prompt):]


@pytest.mark.parametrize("name", sorted(set(ENCODINGS) - {"rope"}))
def test_exact_cache_equals_full_recomputation(params, name):
  encoding = ENCODINGS[name]
  model = gen.Model(CFG, params, encoding)
  want = [recompute(params, encoding, p, NEW) for p in PROMPTS]
  assert gen.generate(model, PROMPTS, NEW) == want


def test_frozen_and_rerotated_caches_drift_under_dynamic_ntk(params):
  """The cheap caches are measurably different beyond the original length (why 'exact' is the default)."""
  encoding = ENCODINGS["dynamic_ntk"]
  model = gen.Model(CFG, params, encoding)
  want = [recompute(params, encoding, p, NEW) for p in PROMPTS]
  frozen = gen.generate(model, PROMPTS, NEW, cache="frozen")
  rerotated = gen.generate(model, PROMPTS, NEW, cache="rerotate")
  assert frozen != want and rerotated != want
  # Inside the original length nothing moves: all three agree on the first tokens.
  first = ORIGINAL - len(PROMPTS[0])
  assert [f[:first] for f in frozen[:2]] == [w[:first] for w in want[:2]]
  assert [r[:first] for r in rerotated[:2]] == [w[:first] for w in want[:2]]


def test_static_encoding_caches_agree_and_prompts_of_several_lengths(params):
  model = gen.Model(CFG, params, ENCODINGS["rope"])
  prompts = PROMPTS + [[5, 5, 5]]  # decoded as two groups, answered in the prompts' order
  exact = gen.generate(model, prompts, NEW)
  assert exact == [recompute(params, ENCODINGS["rope"], p, NEW) for p in prompts]
  assert gen.generate(model, prompts, NEW, cache="frozen") == exact


def test_stop_tokens_sampling_and_bad_arguments(params):
  model = gen.Model(CFG, params, ENCODINGS["rope"])
  greedy = gen.generate(model, PROMPTS[:1], NEW)[0]
  stop = greedy[3]
  first = greedy.index(stop)
  assert gen.generate(model, PROMPTS[:1], NEW, stop_tokens=[stop])[0] == greedy[:first + 1]
  a = gen.generate(model, PROMPTS, 6, temperature=1.0, rng=jax.random.key(1))
  b = gen.generate(model, PROMPTS, 6, temperature=1.0, rng=jax.random.key(1))
  c = gen.generate(model, PROMPTS, 6, temperature=1.0, rng=jax.random.key(2))
  assert a == b and a != c and all(len(x) == 6 for x in a)
  with pytest.raises(ConfigError, match="generate: cache must be one of"):
    gen.generate(model, PROMPTS, 4, cache="stale")
  with pytest.raises(ConfigError, match="needs an rng"):
    gen.generate(model, PROMPTS, 4, temperature=0.7)
  with pytest.raises(ConfigError, match=r"prompts\[1\] must be token ids in \[0, 64\)"):
    gen.generate(model, [[1, 2], [3, 99]], 4)
