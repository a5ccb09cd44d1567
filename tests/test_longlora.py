"""LongLoRA fine-tuning: shifted sparse attention against the reference's own algorithm,
LoRA adapters against an independent unmerged forward, and the training run end to end."""

import json
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from rope_lab import pe

from rope_lab.model import attention

from rope_lab.model import lora

from rope_lab.training import resume

from rope_lab.training import loop as train
from rope_lab import config as config_lib
from rope_lab.errors import ConfigError, WorkdirError
from rope_lab.evaluate import perplexity, runs
from rope_lab.model.forward import encoding_hooks
from rope_lab.model.skeleton import Dense, ModelConfig, Transformer, init_params, token_meta
from rope_lab.training.step import build_program
from tests import train_helpers as th



def _softmax_attention(q, k, v, mask):
  """q [n, D], k/v [m, D], mask bool [n, m] -> [n, D] in float64."""
  s = q @ k.T / math.sqrt(q.shape[-1])
  s = np.where(mask, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)) @ v


def s2_attention_rolled(q, k, v, group):
  """LongLoRA's Algorithm 1 (``forward_noflashattn``): roll the second half of the heads by
  -G/2 along the sequence, cut into groups of G, causal attention per group, roll back.
  q/k/v [B, L, H, D] with k/v already repeated to H heads."""
  b, length, heads, dim = q.shape
  half = heads // 2

  def shift(x):
    x = x.copy()
    x[:, :, half:] = np.roll(x[:, :, half:], -group // 2, axis=1)
    return x.reshape(b, length // group, group, heads, dim)

  qs, ks, vs = shift(q), shift(k), shift(v)
  causal = np.tril(np.ones((group, group), bool))
  out = np.zeros_like(qs)
  for i in range(b):
    for n in range(length // group):
      for h in range(heads):
        out[i, n, :, h] = _softmax_attention(qs[i, n, :, h], ks[i, n, :, h], vs[i, n, :, h], causal)
  out = out.reshape(b, length, heads, dim)
  out[:, :, half:] = np.roll(out[:, :, half:], group // 2, axis=1)
  return out


def s2_attention_varlen(q, k, v, group):
  """LongLoRA's ``forward_flashattn``: the first half of the heads cut at 0, G, 2G, ..., the
  second half at G/2, 3G/2, ... (``cu_seqlens``), causal attention within each piece."""
  b, length, heads, dim = q.shape
  out = np.zeros_like(q)
  for h in range(heads):
    starts = list(range(0, length, group)) if h < heads // 2 else [0] + list(range(group // 2, length, group))
    bounds = starts + [length]
    for i in range(b):
      for lo, hi in zip(bounds[:-1], bounds[1:]):
        causal = np.tril(np.ones((hi - lo, hi - lo), bool))
        out[i, lo:hi, h] = _softmax_attention(q[i, lo:hi, h], k[i, lo:hi, h], v[i, lo:hi, h], causal)
  return out


@pytest.mark.parametrize("implementation,n_kv", [("reference", 4), ("dot_product", 2), ("chunked", 1)])
def test_s2_attention_matches_the_reference_algorithm(implementation, n_kv):
  b, length, heads, dim, group = 2, 16, 4, 8, 4
  rng = np.random.default_rng(0)
  q = rng.normal(size=(b, length, heads, dim))
  k, v = (rng.normal(size=(b, length, n_kv, dim)) for _ in range(2))
  hooks = pe.make("nope").hooks(head_dim=dim, n_heads=heads, d_model=heads * dim, seq_len=length)
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  meta, _ = token_meta(hooks, positions, None, segment_masking=False, rng=None)
  as_f32 = lambda x: jnp.asarray(x, jnp.float32)
  got = np.asarray(attention.attend_shifted_groups(
      as_f32(q), as_f32(k), as_f32(v), meta, hooks, group_size=group, implementation=implementation,
      chunk_size=8))

  k_full, v_full = (np.repeat(x, heads // n_kv, axis=2) for x in (k, v))  # HF repeat_kv
  rolled = s2_attention_rolled(q, k_full, v_full, group)
  varlen = s2_attention_varlen(q, k_full, v_full, group)
  np.testing.assert_allclose(got, varlen, atol=2e-5)
  # The roll version agrees everywhere but on the wrapped tokens of the shifted heads: the
  # first G/2 tokens, which it places behind the row's last G/2 tokens.
  wrapped = np.zeros((length, heads), bool)
  wrapped[: group // 2, heads // 2:] = True
  np.testing.assert_allclose(got[:, ~wrapped], rolled[:, ~wrapped], atol=2e-5)
  assert np.abs(rolled[:, wrapped] - varlen[:, wrapped]).max() > 1e-3  # they do see the future there
  # Beyond the first group the unshifted heads no longer see every earlier token.
  full = np.asarray(attention.attend(as_f32(q), as_f32(k), as_f32(v), meta, hooks, implementation="reference"))
  assert np.abs(full[:, group:, : heads // 2] - got[:, group:, : heads // 2]).max() > 1e-3


# ----------------------------------------------------------------------------- LoRA

_MODEL = ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=32)
_SPEC = lora.LoraSpec(rank=2, alpha=4.0, targets=("q", "k", "v", "o"), extras=lora.TRAINABLE_EXTRAS)


def _model_and_params():
  hooks = pe.make("rope").hooks(head_dim=4, n_heads=4, d_model=16, seq_len=8)
  params = init_params(_MODEL, hooks, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 40, (2, 8)), jnp.int32)
  return Transformer(_MODEL), params, hooks, tokens


def test_fresh_adapters_leave_the_base_model_and_merged_weights_match_the_unmerged_forward():
  model, params, hooks, tokens = _model_and_params()
  forward = jax.jit(lambda p: model.apply({"params": p}, tokens, hooks=hooks))

  @jax.jit
  def forward_unmerged(p, adapters):
    with lora.unmerged(adapters, _SPEC.scale):
      return model.apply({"params": p}, tokens, hooks=hooks)

  base = forward(params)
  adapters = lora.init_adapters(jax.random.key(3), params, _SPEC)
  np.testing.assert_array_equal(forward_unmerged(params, adapters), base)  # b = 0 adds exactly nothing

  trained = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(4), x.shape), adapters)
  unmerged = forward_unmerged(params, trained)
  merged = forward(lora.merge(params, trained, _SPEC.scale))
  assert np.abs(np.asarray(unmerged - base)).max() > 1e-2
  np.testing.assert_allclose(merged, unmerged, atol=1e-5)


def test_adapted_projections_compute_what_a_peft_lora_linear_computes():
  """torch: y = x W^T + (alpha / r) (x A^T) B^T with lora_A [r, in], lora_B [out, r]."""
  model, params, hooks, _ = _model_and_params()
  adapters = jax.tree.map(lambda x: x + 0.1, lora.init_adapters(jax.random.key(3), params, _SPEC))
  x = np.random.default_rng(2).normal(size=(3, 5, 4, 4)).astype(np.float32)  # o's input [.., H, Dh]
  for name, n_in, inputs in (("q", 1, x.reshape(3, 5, 16)), ("o", 2, x)):
    kernel = np.asarray(params["layers_1"]["attn"][name]["kernel"])
    a, b = (np.asarray(adapters["layers_1"]["attn"][name][k]) for k in ("a", "b"))
    fan_in = int(np.prod(kernel.shape[:n_in]))
    weight, lora_a, lora_b = (torch.tensor(m) for m in (kernel.reshape(fan_in, -1).T, a.reshape(fan_in, -1).T,
                                                          b.reshape(_SPEC.rank, -1).T))
    x_t = torch.tensor(inputs.reshape(-1, fan_in))
    expected = (x_t @ weight.T + _SPEC.scale * (x_t @ lora_a.T) @ lora_b.T).numpy()
    merged = lora.merge(params, adapters, _SPEC.scale)["layers_1"]["attn"][name]["kernel"]
    dense = Dense(kernel.shape[n_in:], (None,) * kernel.ndim, n_in=n_in)
    got = dense.apply({"params": {"kernel": merged}}, jnp.asarray(inputs))
    np.testing.assert_allclose(np.asarray(got).reshape(expected.shape), expected, atol=1e-5, err_msg=name)


def _flat(tree):
  return {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_a_train_step_moves_only_adapters_embeddings_and_norms_and_trains_with_s2_attention():
  exp = th.tiny_experiment(lora_rank=4, s2_attn_group_fraction=0.25, warmup_steps=0)
  program = build_program(exp)
  base = program.init_state(0)
  before_params, before_adapters = _flat(base.params), _flat(base.adapters)
  batch = next(train.rope_lab_data_source(exp.data)("train", seq_len=16, global_batch_size=8, seed=0,
                                                    process_index=0, process_count=1))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  loss_sum, count = program.eval_step(program.model_params(base), batch, program.setup.hooks)
  state, metrics = program.train_step(base, batch, program.setup.hooks)
  # Fresh adapters add exactly nothing (the test above) and rope draws nothing random, so
  # the training loss differs from the evaluation loss of the same batch through S2-Attn alone.
  assert abs(float(metrics["loss"]) - float(loss_sum / count)) > 1e-4
  after = _flat(state.params)
  assert np.isfinite(float(metrics["loss"]))
  for key, value in before_params.items():
    trained = key.startswith("embed/") or "norm/" in key
    moved = not np.array_equal(after[key], value)
    assert moved == trained, key
  assert all(not np.array_equal(_flat(state.adapters)[k], v) for k, v in before_adapters.items())


def test_lora_config_fields_are_checked_where_they_are_set():
  with pytest.raises(ConfigError, match="config.lora_targets"):
    th.tiny_experiment(lora_rank=4, lora_targets=("q", "attn"))
  with pytest.raises(ConfigError, match="config.lora_trainable"):
    th.tiny_experiment(lora_trainable=("heads",))
  with pytest.raises(ConfigError, match="config.lora_rank"):
    th.tiny_experiment(lora_rank=-1)
  with pytest.raises(ConfigError, match="config.s2_attn_group_fraction"):
    th.tiny_experiment(s2_attn_group_fraction=0.1)  # G = int(1.6) = 1
  with pytest.raises(ConfigError, match="config.s2_attn_group_fraction"):
    th.tiny_experiment(seq_len=20, s2_attn_group_fraction=0.3)  # G = 6 does not divide 20


def _longlora_experiment(base: str, **fields):
  config = th.tiny_config.get_config()
  config.update({**dict(seq_len=32, steps=4, init_from=base, lr_schedule="constant", warmup_steps=0,
                         weight_decay=0.0, lora_rank=4, lora_alpha=8.0, s2_attn_group_fraction=0.25,
                         checkpoint_every=2), **fields})
  return config_lib.experiment_from_config_dict(config)


def test_longlora_finetune_resumes_exactly_and_its_checkpoint_evaluates_as_merged_weights(tmp_path):
  base, straight, interrupted = (str(tmp_path / name) for name in ("base", "straight", "interrupted"))
  train.run(th.tiny_experiment(steps=3), base)
  exp = _longlora_experiment(base)
  assert train.run(exp, straight).step == 4
  first = train.run(exp, interrupted, data_source=th.wrapped_source(exp, th.sigterm_on_batch(3)))
  assert (first.status, first.step) == ("preempted", 3)
  assert train.run(exp, interrupted).step == 4
  a, b = th.saved_params(straight, 4), th.saved_params(interrupted, 4)
  for key in a:  # the resumed run continued from the very same adapters, base and moments
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  losses = lambda d: [(r["step"], r["loss"]) for r in th.read_metrics(d)]
  assert losses(straight) == losses(interrupted) and len(losses(straight)) == 4

  # What evaluation reads: the merged weights. Parameters outside the adapters and the
  # extras are the base run's; the merged kernels are base + (alpha / r) a b.
  base_params, tuned = th.saved_params(base, 3), th.saved_params(straight, 4)
  for key in base_params:
    if key.startswith("/embed/") or "norm/" in key or "/attn/" in key:
      continue
    np.testing.assert_array_equal(tuned[key], base_params[key], err_msg=key)
  run = runs.load_run(straight)
  with warnings.catch_warnings():  # "sharding info not provided": host arrays are wanted
    warnings.simplefilter("ignore", UserWarning)
    stored = th.ocp.PyTreeCheckpointer().restore(os.path.join(straight, "checkpoints", "4", "optimizer"))
  lora_state = stored["adapters"]
  frozen = _flat(lora_state["frozen"])
  for key, kernel in frozen.items():
    np.testing.assert_array_equal(kernel, base_params["/" + key], err_msg=key)
  tokens = np.random.default_rng(0).integers(0, 256, (2, 32))
  evaluated = perplexity.logits_fn(run.model, run.params, run.encoding)(tokens)
  model = Transformer(perplexity.eval_model_config(run.model, 32))
  hooks = encoding_hooks(run.model, run.encoding, 32)
  unmerged_params = lora.replace_leaves(run.params, lora_state["frozen"])
  with lora.unmerged(lora_state["adapters"], 8.0 / 4):
    expected = jax.jit(lambda p, h: model.apply({"params": p}, jnp.asarray(tokens), hooks=h))(unmerged_params, hooks)
  np.testing.assert_allclose(np.asarray(evaluated), np.asarray(expected), atol=1e-4)
  assert np.abs(np.asarray(_flat(lora_state["adapters"])["layers_0/attn/q/b"])).max() > 0


def test_a_longlora_run_resumes_only_with_the_same_adapters_and_groups(tmp_path):
  stored = config_lib.experiment_to_dict(_longlora_experiment("/runs/base"))
  (tmp_path / "config.json").write_text(json.dumps(stored))
  for field, value in (("lora_rank", 8), ("lora_alpha", 4.0), ("lora_targets", ("q", "v")),
                       ("lora_trainable", ("norms",)), ("s2_attn_group_fraction", 0.5)):
    changed = config_lib.experiment_to_dict(_longlora_experiment("/runs/base", **{field: value}))
    with pytest.raises(WorkdirError, match=f"train.{field}"):
      resume.check_resume(str(tmp_path), changed, 2)
  longer = config_lib.experiment_to_dict(_longlora_experiment("/runs/base", steps=8))
  assert resume.check_resume(str(tmp_path), longer, 2) == {"train.steps": (4, 8)}
