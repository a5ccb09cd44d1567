"""Cached generation equals recomputing the whole sequence at every step, token for token.

The reference is the plain forward pass (``Transformer.apply`` over the whole sequence
with the encoding resolved at its length), argmax at the last position, one token at a
time: exactly what "recompute everything" means, with no cache anywhere. It compiles once
per length (the model refuses inputs longer than the length its hooks were made for, so
the input cannot be padded to one shape); rows of equal length share each call, and each
encoding's reference is computed once for the module.
"""

import functools

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
_PARAMS = []  # the module fixture's parameters, for the cached reference
# Compilation dominates (one program per reference length and encoding); tokens are
# compared between two programs compiled the same way.


@pytest.fixture(scope="module")
def params():
  hooks = pe.make("rope").hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=1)
  p = init_params(CFG, hooks, jax.random.key(0))
  # Larger weights than the init so that attention is sharp and positions matter.
  return jax.tree_util.tree_map(lambda x: x * 8 if x.ndim >= 2 else x, p)


@functools.lru_cache(maxsize=None)
def _reference(name, prompts, n):
  """Greedy continuations of ``prompts`` (a tuple of equal-length tuples) under ENCODINGS[name]."""
  encoding, rows = ENCODINGS[name], [list(p) for p in prompts]
  for _ in range(n):
    length = len(rows[0])
    hooks = encoding.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=length)
    logits = FORWARD(_PARAMS[0], np.asarray(rows, np.int32), hooks)
    for row, logit in zip(rows, np.asarray(logits[:, -1])):
      row.append(int(np.argmax(logit)))
  return [row[len(prompts[0]):] for row in rows]


def recompute(params, encoding, prompt, n):
  name = next(k for k, v in ENCODINGS.items() if v is encoding)
  _PARAMS[:] = [params]
  return _reference(name, (tuple(prompt),), n)[0]


def recompute_rows(params, name, prompts, n):
  """recompute() for every prompt, prompts of one length in one batch."""
  _PARAMS[:] = [params]
  return _reference(name, tuple(tuple(p) for p in prompts), n)


@pytest.mark.parametrize("name", sorted(set(ENCODINGS) - {"rope"}))
def test_exact_cache_equals_full_recomputation(params, name):
  encoding = ENCODINGS[name]
  model = gen.Model(CFG, params, encoding)
  want = recompute_rows(params, name, PROMPTS, NEW)
  assert gen.generate(model, PROMPTS, NEW) == want


def test_frozen_and_rerotated_caches_drift_under_dynamic_ntk(params):
  """The cheap caches are measurably different beyond the original length (why 'exact' is the default)."""
  encoding = ENCODINGS["dynamic_ntk"]
  model = gen.Model(CFG, params, encoding)
  want = recompute_rows(params, "dynamic_ntk", PROMPTS, NEW)
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
  assert exact == recompute_rows(params, "rope", PROMPTS, NEW) + [recompute(params, ENCODINGS["rope"], [5, 5, 5], NEW)]
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
