"""The Transformer skeleton: config validation, parameter tree, hooks plumbing, masking."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rope_lab import pe

from rope_lab.model import skeleton as model
from rope_lab.pe.rotary import interleaved_to_half

L, B, V, D, H, K = 13, 2, 32, 32, 4, 2  # L = 13 is not a multiple of the chunk size
CFG = model.ModelConfig(vocab_size=V, d_model=D, n_layers=1, n_heads=H, n_kv_heads=K, mlp_dim=64,
                        chunk_size=8, init_std=0.2)  # a large init makes attention non-uniform


def hooks_for(name, length=L, cfg=CFG, **params):
  return pe.make(name, **params).hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model,
                                       seq_len=length)


def tokens(seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, V, (B, L)), jnp.int32)


def packed():
  """(positions, segment ids): row 0 holds segments of 5 and 6 tokens and 2 padding tokens."""
  seg = np.stack([[1] * 5 + [2] * 6 + [0] * 2, [1] * L])
  pos = np.stack([list(range(5)) + list(range(6)) + [0, 0], list(range(L))])
  return jnp.asarray(pos, jnp.int32), jnp.asarray(seg, jnp.int32)


# Tests compile dozens of tiny programs; LLVM's optimisations would double the compile
# time and change nothing the assertions look at (XLA's graph passes still run).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(autouse=True)
def full_float32_matmuls():
  """On GPUs float32 dots default to TF32 (~1e-3); the tolerances here assume float32."""
  with jax.default_matmul_precision("highest"):
    yield


@functools.partial(jit, static_argnames=("cfg", "return_attention"))
def forward(cfg, params, tokens, hooks, positions=None, segment_ids=None, rng=None, return_attention=False):
  return model.Transformer(cfg).apply({"params": params}, tokens, hooks=hooks, positions=positions,
                                      segment_ids=segment_ids, rng=rng, return_attention=return_attention)


def abstract_params(cfg, hooks):
  return jax.eval_shape(lambda rng: model.init_params(cfg, hooks, rng), jax.random.key(0))


def shapes(tree):
  return {jax.tree_util.keystr(path): tuple(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def params():
  """Parameters initialised with plain RoPE; every test below reuses them with other encodings."""
  return jit(lambda rng: model.init_params(CFG, hooks_for("rope"), rng))(jax.random.key(0))


# ----------------------------------------------------------------------------- config


def test_config_resolves_defaults():
  cfg = model.ModelConfig(d_model=64, n_heads=8)
  assert (cfg.n_kv_heads, cfg.head_dim, cfg.dtype) == (8, 8, jnp.float32)
  assert model.ModelConfig(compute_dtype="bfloat16").dtype == jnp.bfloat16


@pytest.mark.parametrize("field,kwargs", [
    ("n_kv_heads", dict(n_heads=4, n_kv_heads=3)),
    ("d_model", dict(d_model=30, n_heads=4)),
    ("head_dim", dict(head_dim=0)),
    ("vocab_size", dict(vocab_size=0)),
    ("n_layers", dict(n_layers=2.0)),
    ("mlp", dict(mlp="relu")),
    ("norm", dict(norm="batch")),
    ("norm_eps", dict(norm_eps=0.0)),
    ("attention", dict(attention="flash")),
    ("compute_dtype", dict(compute_dtype="float16")),
    ("logit_soft_cap", dict(logit_soft_cap=-1.0, attention="reference")),
    ("logit_soft_cap", dict(logit_soft_cap=30.0, attention="dot_product")),
    ("tied_embeddings", dict(tied_embeddings="yes")),
    ("chunk_size", dict(chunk_size=0)),
    ("embedding_multiplier", dict(embedding_multiplier=0.0)),
])
def test_config_rejects_bad_field_by_name(field, kwargs):
  with pytest.raises(model.ModelConfigError, match=f"ModelConfig.{field} "):
    model.ModelConfig(**kwargs)


def test_head_dim_may_differ_from_d_model_over_heads():
  cfg = model.ModelConfig(d_model=30, n_heads=4, head_dim=16)  # d_model need not divide then
  assert cfg.head_dim == 16


def test_hooks_for_another_shape_are_refused(params):
  wrong = pe.make("alibi").hooks(head_dim=8, n_heads=2, d_model=D, seq_len=L)
  with pytest.raises(ValueError, match="alibi_slopes"):
    jax.eval_shape(functools.partial(forward, CFG), params, tokens(), wrong)


# ----------------------------------------------------------------------------- parameters


def test_parameter_tree_llama_qwen_shapes_and_axes():
  cfg = model.ModelConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                          mlp_dim=48, qkv_bias=True)
  hooks = hooks_for("rope", cfg=cfg)
  layer = {
      "['attn_norm']['scale']": (D,), "['mlp_norm']['scale']": (D,),
      "['attn']['q']['kernel']": (D, 4, 16), "['attn']['q']['bias']": (4, 16),
      "['attn']['k']['kernel']": (D, 2, 16), "['attn']['k']['bias']": (2, 16),
      "['attn']['v']['kernel']": (D, 2, 16), "['attn']['v']['bias']": (2, 16),
      "['attn']['o']['kernel']": (4, 16, D),
      "['mlp']['gate']['kernel']": (D, 48), "['mlp']['up']['kernel']": (D, 48), "['mlp']['down']['kernel']": (48, D),
  }
  want = {"['embed']['embedding']": (V, D), "['final_norm']['scale']": (D,), "['lm_head']['kernel']": (D, V)}
  for i in range(2):
    want.update({f"['layers_{i}']" + key: shape for key, shape in layer.items()})
  tree = abstract_params(cfg, hooks)
  assert shapes(tree) == want
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree))
  axes = model.param_logical_axes(cfg, hooks)
  assert axes["embed"]["embedding"] == P("vocab", "embed")
  assert axes["lm_head"]["kernel"] == P("embed", "vocab")
  attn = axes["layers_1"]["attn"]
  assert attn["q"]["kernel"] == P("embed", "heads", "head_dim")
  assert attn["k"]["bias"] == P("kv_heads", "head_dim")
  assert attn["o"]["kernel"] == P("heads", "head_dim", "embed")
  assert axes["layers_0"]["mlp"]["down"]["kernel"] == P("mlp", "embed")
  assert axes["final_norm"]["scale"] == P("norm")


def test_parameter_tree_gelu_layernorm_tied_learned_ape():
  cfg = dataclasses.replace(CFG, mlp="gelu", norm="layer", tied_embeddings=True)
  hooks = hooks_for("learned", max_length=20)
  got = shapes(abstract_params(cfg, hooks))
  assert got["['pos_embed']"] == (20, D)
  assert got["['final_norm']['bias']"] == (D,) and got["['layers_0']['attn_norm']['bias']"] == (D,)
  assert not [k for k in got if "lm_head" in k or "gate" in k or "['o']['bias']" in k]
  assert got["['layers_0']['mlp']['up']['kernel']"] == (D, 64)


def test_changing_the_encoding_keeps_the_parameters(params):
  """Parameters from a RoPE init serve every other encoding (learned APE only adds its table)."""
  want = shapes(params)
  others = {
      "yarn": dict(factor=4.0, original_max_position_embeddings=8), "alibi": {}, "xpos": {}, "nope": {},
      "self_extend": dict(group_size=2, window=4, original_max_position_embeddings=8), "sinusoidal": {},
  }
  positions, segments = packed()
  for name, kw in others.items():
    hooks = hooks_for(name, **kw)
    assert shapes(abstract_params(CFG, hooks)) == want, name
    logits = forward(CFG, params, tokens(), hooks, positions, segments)
    assert logits.shape == (B, L, V) and logits.dtype == jnp.float32, name
    assert np.all(np.isfinite(logits)), name
  learned = shapes(abstract_params(CFG, hooks_for("learned", max_length=16)))
  assert {k: v for k, v in learned.items() if k != "['pos_embed']"} == want


def test_no_recompile_across_encodings_that_only_change_numbers(params):
  traces = []

  @jit
  def logits_fn(params, tokens, hooks):
    traces.append(1)
    return model.Transformer(CFG).apply({"params": params}, tokens, hooks=hooks)

  outs = {}
  for name, kw in [("rope", {}), ("pi", dict(factor=2.0)), ("ntk", dict(alpha=4.0)),
                   ("yarn", dict(factor=4.0, original_max_position_embeddings=8))]:
    outs[name] = logits_fn(params, tokens(), hooks_for(name, **kw))
  assert len(traces) == 1 and logits_fn._cache_size() == 1
  assert not np.allclose(outs["rope"], outs["pi"]) and not np.allclose(outs["rope"], outs["yarn"])


# ----------------------------------------------------------------------------- paths and masks


# Rotary, bias and SelfExtend hooks are compared path by path in tests/test_attention.py;
# here the plumbing: packed positions/segments and the absolute tables (sinusoidal, and a
# learned one read between rows).
MODEL_CASES = {
    "rope-packed": ("rope", {}),
    "learned-interpolate": ("learned", dict(extension="interpolate", extension_factor=2.0, max_length=8,
                                            extension_mode="static")),
    "sinusoidal": ("sinusoidal", {}),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_attention_paths_agree_through_the_model(case, params):
  name, kw = MODEL_CASES[case]
  hooks = hooks_for(name, **kw)
  if hooks.absolute == "learned":
    table = np.random.RandomState(1).standard_normal((hooks.learned_length, D))
    params = dict(params, pos_embed=jnp.asarray(table, jnp.float32))
  positions, segments = packed()
  want = forward(dataclasses.replace(CFG, attention="reference"), params, tokens(), hooks, positions, segments)
  for impl in ("dot_product", "chunked"):
    got = forward(dataclasses.replace(CFG, attention=impl), params, tokens(), hooks, positions, segments)
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=impl)


def test_embedding_multiplier_scales_the_tokens_not_the_table_or_the_output(params):
  """Vaswani et al. §3.4: the token embeddings are multiplied by sqrt(d_model), then the sinusoid
  table is added unscaled; an untied output layer is untouched. So the multiplier must equal a
  token table scaled by it (and not equal the table added to unscaled tokens)."""
  hooks = hooks_for("sinusoidal")
  scaled_tokens = dict(params, embed={"embedding": params["embed"]["embedding"] * np.sqrt(D)})
  want = forward(CFG, scaled_tokens, tokens(), hooks)
  got = forward(dataclasses.replace(CFG, embedding_multiplier=float(np.sqrt(D))), params, tokens(), hooks)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(forward(CFG, params, tokens(), hooks), want, atol=1e-3)


def test_loss_at_t_has_zero_gradient_from_later_inputs(params):
  t = 6
  toks = jnp.asarray(np.random.RandomState(1).permutation(V)[:L][None].repeat(B, 0), jnp.int32)
  hooks = hooks_for("rope")

  def loss_at_t(embedding):
    p = dict(params, embed={"embedding": embedding})
    return -jax.nn.log_softmax(model.Transformer(CFG).apply({"params": p}, toks, hooks=hooks)[:, t])[:, 0].sum()

  # Every token is distinct, so embedding row toks[i] is the input at position i only.
  grad_rows = np.asarray(jax.jit(jax.grad(loss_at_t))(params["embed"]["embedding"]))[np.asarray(toks[0])]
  assert np.all(grad_rows[t + 1:] == 0.0)
  assert np.all(np.abs(grad_rows[: t + 1]).sum(axis=-1) > 0)


@pytest.mark.parametrize("impl", ["dot_product", "chunked"])
def test_packed_segments_are_isolated(impl, params):
  cfg = dataclasses.replace(CFG, attention=impl)
  hooks = hooks_for("rope")
  positions, segments = packed()
  toks = tokens()
  base = np.asarray(forward(cfg, params, toks, hooks, positions, segments))
  later = np.asarray(forward(cfg, params, toks.at[0, 5:11].set((toks[0, 5:11] + 1) % V), hooks, positions, segments))
  np.testing.assert_array_equal(later[0, :5], base[0, :5])
  assert not np.allclose(later[0, 5:11], base[0, 5:11])
  earlier = np.asarray(forward(cfg, params, toks.at[0, :5].set((toks[0, :5] + 1) % V), hooks, positions, segments))
  np.testing.assert_array_equal(earlier[0, 5:11], base[0, 5:11])
  # Packing invariance: segment 2 gives the same logits alone at the start of a row.
  alone = toks.at[0, :6].set(toks[0, 5:11])
  seg_alone = jnp.asarray(np.stack([[1] * 6 + [0] * (L - 6), [1] * L]), jnp.int32)
  pos_alone = jnp.asarray(np.stack([list(range(6)) + [0] * (L - 6), list(range(L))]), jnp.int32)
  got = np.asarray(forward(cfg, params, alone, hooks, pos_alone, seg_alone))
  np.testing.assert_allclose(got[0, :6], base[0, 5:11], atol=1e-5)


def test_without_segment_masking_segments_see_each_other(params):
  cfg = dataclasses.replace(CFG, segment_masking=False)
  positions, segments = packed()
  toks = tokens()
  base = forward(cfg, params, toks, hooks_for("rope"), positions, segments)
  changed = forward(cfg, params, toks.at[0, :5].set((toks[0, :5] + 1) % V), hooks_for("rope"), positions, segments)
  assert not np.allclose(base[0, 5:11], changed[0, 5:11])


def test_rotate_half_equals_interleaved_with_permuted_qk_weights(params):
  """x_half = x_interleaved[..., perm] per head turns one layout into the other exactly."""
  perm = interleaved_to_half(CFG.head_dim)
  layer = params["layers_0"]["attn"]
  permuted = {n: {"kernel": layer[n]["kernel"][..., perm]} for n in ("q", "k")}
  half_params = dict(params, layers_0=dict(params["layers_0"], attn=dict(layer, **permuted)))
  positions, segments = packed()
  inter = forward(CFG, params, tokens(), hooks_for("rope", layout="interleaved"), positions, segments)
  half = forward(CFG, half_params, tokens(), hooks_for("rope"), positions, segments)
  np.testing.assert_allclose(half, inter, atol=1e-5)
  assert not np.allclose(forward(CFG, params, tokens(), hooks_for("rope"), positions, segments), inter, atol=1e-3)


def test_bfloat16_compute_stays_close_to_float32(params):
  hooks = hooks_for("rope")
  want = np.asarray(forward(CFG, params, tokens(), hooks))
  got = forward(dataclasses.replace(CFG, compute_dtype="bfloat16"), params, tokens(), hooks)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, atol=0.03 * np.abs(want).max())


def test_return_attention_gives_causal_segment_masked_probabilities(params):
  hooks = hooks_for("rope")
  positions, segments = packed()
  logits, probs = forward(CFG, params, tokens(), hooks, positions, segments, return_attention=True)
  np.testing.assert_allclose(logits, forward(CFG, params, tokens(), hooks, positions, segments), atol=1e-5)
  probs = np.asarray(probs)
  assert probs.shape == (CFG.n_layers, B, H, L, L)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert np.all(probs[..., np.triu_indices(L, 1)[0], np.triu_indices(L, 1)[1]] == 0)
  assert np.all(probs[:, 0, :, 5:11, :5] == 0) and np.all(probs[:, 0, :, 5:11, 5:11].sum(-1) > 0.999)


def test_randomized_positions_follow_the_rng(params):
  hooks = hooks_for("randomized", max_position=64)
  toks = tokens()
  first = forward(CFG, params, toks, hooks, rng=jax.random.key(1))
  assert not np.allclose(first, forward(CFG, params, toks, hooks_for("rope")), atol=1e-4)
  assert not np.allclose(first, forward(CFG, params, toks, hooks, rng=jax.random.key(2)), atol=1e-4)
  np.testing.assert_array_equal(first, forward(CFG, params, toks, hooks, rng=jax.random.key(1)))


def test_activation_axis_names_resolve_under_a_rule_table(params):
  """With a mesh and a rule table in force every activation annotation becomes a constraint."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  rules = (("batch", "data"), ("length", None), ("embed", None), ("heads", None), ("kv_heads", None),
           ("head_dim", None), ("mlp", None), ("vocab", None))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    fresh = jax.jit(lambda p, t, h: model.Transformer(CFG).apply({"params": p}, t, hooks=h))  # traced here
    text = fresh.lower(params, tokens(), hooks_for("rope")).as_text()
  # embeddings and logits, and per layer q, k, v, attention output, mlp hidden, block output
  # (Shardy prints sdy.sharding_constraint, GSPMD a "Sharding" custom call).
  assert text.count("sharding_constraint") + text.count('"Sharding"') == 2 + 6 * CFG.n_layers
