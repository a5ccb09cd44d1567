"""Layers scanned over their stacked weights compute what the unrolled layers compute."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab import config, pe

from rope_lab.model import generate as gen

from rope_lab.model import layer_scan
from rope_lab.errors import ConfigError
from rope_lab.model.skeleton import ModelConfig, Transformer, init_params

# 5 layers under a period-2 pattern: two scanned repetitions and one unrolled tail layer.
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=5, n_heads=4, n_kv_heads=2, mlp_dim=64, attention="reference")
PER_LAYER = pe.make("per_layer", layer_pattern="LG", local_base=10.0, global_base=10000.0)


def test_run_layers_visits_every_layer_in_order_with_its_state_slice():
  """A toy layer against a plain loop: order, the period index, the state slices and outputs."""
  n, period = 7, 3
  weights = [{"w": jnp.float32(i + 2)} for i in range(n)]
  state = jnp.arange(n, dtype=jnp.float32) * 10  # layer i's state is 10 i

  def layer(j, x, p, s):
    return x * p["w"] + s + j % period, s + x  # j: static; only j % period may matter

  x, want_states = jnp.float32(1), []
  for i in range(n):  # what the layers must compute, written out
    want_states.append(float(10 * i + x))
    x = x * (i + 2) + 10 * i + i % period
  for scan in (False, True):
    got_x, got_states = layer_scan.run_layers(layer, jnp.float32(1),
                                              layer_scan.stack(weights, period=period, scan=scan), state)
    assert float(got_x) == float(x), scan
    np.testing.assert_array_equal(np.asarray(got_states), want_states)
  stacked = layer_scan.stack(weights, period=period)
  assert len(stacked.scanned) == period and stacked.scanned[0]["w"].shape == (2,) and len(stacked.tail) == 1
  assert layer_scan.stack(weights, period=4).scanned is None  # one repetition: nothing to scan


def test_scanned_model_gives_the_unrolled_logits_attention_and_gradients():
  """Under a per-layer pattern (each position in the period its own hooks); the real model's
  identical layers (period 1) are checked against transformers in test_real_model."""
  hooks = PER_LAYER.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=16)
  params = init_params(CFG, hooks, jax.random.key(0))
  tokens = np.random.RandomState(0).randint(0, 64, (2, 16)).astype(np.int32)
  results = {}
  for scan in (False, True):
    model = Transformer(dataclasses.replace(CFG, scan_layers=scan))
    forward = lambda p, model=model: model.apply({"params": p}, tokens, hooks=hooks, return_attention=True)
    loss = lambda p, forward=forward: jnp.mean(jax.nn.log_softmax(forward(p)[0])[..., 0])
    results[scan] = jax.jit(forward)(params), jax.jit(jax.grad(loss))(params)
  (logits, probs), grads = results[False]
  (logits_s, probs_s), grads_s = results[True]
  np.testing.assert_allclose(logits_s, logits, rtol=1e-6, atol=1e-6)
  assert probs_s.shape == probs.shape == (CFG.n_layers, 2, CFG.n_heads, 16, 16)
  np.testing.assert_allclose(probs_s, probs, rtol=1e-6, atol=1e-7)
  for name in ("layers_0", "layers_3", "layers_4", "embed"):  # scanned, scanned, tail, outside
    for a, b in zip(jax.tree_util.tree_leaves(grads_s[name]), jax.tree_util.tree_leaves(grads[name])):
      assert np.abs(np.asarray(a)).max() > 0
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("scan", [False, True])
def test_generation_under_a_per_layer_encoding_follows_the_full_forward(scan):
  """Each layer's own rotary tables in the cache, scanned or not: the tokens of recomputing
  the sequence (one forward pass scores every step: the per-layer bases do not depend on
  the length, and attention is causal)."""
  cfg = dataclasses.replace(CFG, scan_layers=scan)
  hooks = PER_LAYER.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=1)
  params = jax.tree_util.tree_map(lambda x: x * 8 if x.ndim >= 2 else x, init_params(cfg, hooks, jax.random.key(1)))
  prompts = [[1, 2, 3, 4, 5, 6], [7, 7, 3, 9, 1, 2]]
  got = gen.generate(gen.Model(cfg, params, PER_LAYER), prompts, 10)
  rows = np.asarray([p + g for p, g in zip(prompts, got)], np.int32)
  full = PER_LAYER.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=rows.shape[1])
  logits = np.asarray(jax.jit(lambda p, t, h: Transformer(CFG).apply({"params": p}, t, hooks=h))(params, rows, full))
  assert got == logits[:, len(prompts[0]) - 1:-1].argmax(-1).tolist()


def test_lora_refuses_scanned_layers():
  from configs import tiny_cpu  # pylint: disable=import-outside-toplevel
  cfg = tiny_cpu.get_config()
  cfg.lora_rank = 4
  cfg.model.scan_layers = True
  with pytest.raises(ConfigError, match=r"config.model.scan_layers must be False with config.lora_rank=4"):
    config.experiment_from_config_dict(cfg)
