"""Cached generation equals recomputing the whole sequence at every step, token for token.

The reference is the plain forward pass (``Transformer.apply`` over the sequence with the
encoding resolved at its length), argmax at the last position: exactly what "recompute
everything" means, with no cache anywhere. Causal attention makes the logits at position
n - 1 of a longer sequence those of its first n tokens alone whenever the hooks resolved
at the longer length act on those tokens as the hooks at n do, which each method's paper
fixes: RoPE and SelfExtend never depend on the length, LongRoPE switches once (short
factors up to its original length, long factors beyond), Dynamic NTK and Dynamic YaRN
are plain RoPE up to the original length and change at every length beyond it. So one
forward pass per such group of lengths scores every step of a generation against its
own prefix (teacher forcing), instead of one compilation per length.
"""

import jax
import numpy as np
import pytest

from rope_lab.model import generate as gen
from rope_lab import pe
from rope_lab.errors import ConfigError
from rope_lab.model.skeleton import ModelConfig, Transformer, init_params

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
# Lengths whose hooks act alike on a shorter prefix share a group (see the module docstring).
HOOKS_GROUP = {
    "rope": lambda length: 0,
    "self_extend": lambda length: 0,
    "longrope": lambda length: length > ORIGINAL,
    "dynamic_ntk": lambda length: length if length > ORIGINAL else 0,
    "dynamic_yarn": lambda length: length if length > ORIGINAL else 0,
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


def recomputed(params, name, prompts, generated):
  """The greedy token after every prefix of prompt + generated, each from a full forward pass.

  ``prompts`` (of one length) and ``generated`` are lists of rows; the result has the
  shape of ``generated``: generation is right exactly when the two are equal.
  """
  encoding = ENCODINGS[name]
  rows = np.asarray([list(p) + list(g) for p, g in zip(prompts, generated)], np.int32)
  prompt_len, total = len(prompts[0]), rows.shape[1]
  groups: dict = {}
  for length in range(prompt_len, total):  # the prefix length whose next token is predicted
    groups.setdefault(HOOKS_GROUP[name](length), []).append(length)
  predicted = np.zeros((len(rows), total - prompt_len), np.int64)
  for lengths in groups.values():
    longest = max(lengths)
    hooks = encoding.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=longest)
    logits = np.asarray(FORWARD(params, rows[:, :longest], hooks))
    for length in lengths:
      predicted[:, length - prompt_len] = logits[:, length - 1].argmax(-1)
  return predicted.tolist()


@pytest.mark.parametrize("name", sorted(set(ENCODINGS) - {"rope"}))
def test_exact_cache_equals_full_recomputation(params, name):
  encoding = ENCODINGS[name]
  model = gen.Model(CFG, params, encoding)
  got = gen.generate(model, PROMPTS, NEW)
  assert all(len(row) == NEW for row in got)
  assert got == recomputed(params, name, PROMPTS, got)


def test_frozen_and_rerotated_caches_drift_under_dynamic_ntk(params):
  """The cheap caches are measurably different beyond the original length (why 'exact' is the default)."""
  encoding = ENCODINGS["dynamic_ntk"]
  model = gen.Model(CFG, params, encoding)
  want = gen.generate(model, PROMPTS, NEW)
  assert want == recomputed(params, "dynamic_ntk", PROMPTS, want)
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
  assert all(len(row) == NEW for row in exact)
  assert exact == recomputed(params, "rope", PROMPTS, exact[:2]) + recomputed(params, "rope", [[5, 5, 5]], exact[2:])
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


def test_float_prompt_ids_are_refused_not_truncated(params):
  model = gen.Model(CFG, params, ENCODINGS["rope"])
  with pytest.raises(ConfigError, match=r"prompts\[0\] must be token ids in \[0, 64\).*float64 ids"):
    gen.generate(model, [[1.0, 2.7]], 2)
