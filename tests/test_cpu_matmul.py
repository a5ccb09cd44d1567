"""The bfloat16 CPU matmul kernel (rope_lab/model/kernels/cpu_matmul) against float64 NumPy,
PyTorch's bfloat16 matmul and the model's float32 path; its choice and fallbacks.

Shapes cross the kernel's blocks (8-row and 48-column panels, 128 k-pairs, 96 x 384 tiles)
without being multiples of any of them. Inputs are rounded to bfloat16 first, so the
float64 reference sees exactly the kernel's operands: only float32 summation separates them.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rope_lab import pe
from rope_lab.errors import ConfigError
from rope_lab.model import skeleton
from rope_lab.model.kernels import cpu_matmul
from rope_lab.model.skeleton import ModelConfig, ModelConfigError, Transformer

pytestmark = pytest.mark.skipif(not cpu_matmul.available()[0], reason=cpu_matmul.available()[1])

SHAPES = [(1, 1, 1), (7, 1, 50), (9, 33, 47), (97, 257, 385), (200, 300, 17)]  # (M, K, N)


def _bf16(rs, shape):
  return jnp.asarray(rs.standard_normal(shape), jnp.bfloat16)


def _f64(x):
  return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def _close(actual, expected, rtol):
  scale = np.abs(expected).max() + 1e-30
  np.testing.assert_array_less(np.abs(_f64(actual) - expected).max() / scale, rtol)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("transpose_a,transpose_b", [(False, False), (False, True), (True, False)])
def test_kernel_matches_float64(m, k, n, transpose_a, transpose_b):
  rs = np.random.RandomState(m + k + n)
  a = _bf16(rs, (k, m) if transpose_a else (m, k))
  b = _bf16(rs, (n, k) if transpose_b else (k, n))
  expected = (_f64(a).T if transpose_a else _f64(a)) @ (_f64(b).T if transpose_b else _f64(b))
  call = jax.jit(cpu_matmul._call, static_argnums=(2, 3, 4))  # pylint: disable=protected-access
  _close(call(a, b, jnp.float32, transpose_a, transpose_b), expected, 2e-6)
  _close(call(a, b, jnp.bfloat16, transpose_a, transpose_b), expected, 8e-3)  # one rounding to bfloat16


def test_batched_operands():
  """Leading dims of A; B shared (stacked into rows) or batched alike."""
  rs = np.random.RandomState(0)
  a, shared, per_item = _bf16(rs, (2, 3, 19, 40)), _bf16(rs, (1, 1, 40, 21)), _bf16(rs, (2, 3, 40, 21))
  call = jax.jit(cpu_matmul._call, static_argnums=2)  # pylint: disable=protected-access
  _close(call(a, shared, jnp.float32), _f64(a) @ _f64(shared), 2e-6)
  _close(call(a, per_item, jnp.float32), _f64(a) @ _f64(per_item), 2e-6)


def test_against_torch_bf16():
  rs = np.random.RandomState(1)
  x, w = _bf16(rs, (333, 576)), _bf16(rs, (576, 150))
  ours = jax.jit(cpu_matmul.matmul)(x, w)
  theirs = (torch.from_numpy(_f64(x)).bfloat16() @ torch.from_numpy(_f64(w)).bfloat16()).float().numpy()
  exact = _f64(x) @ _f64(w)
  # torch returns bfloat16; ours float32 sums: both agree with the exact product to torch's rounding.
  _close(theirs, exact, 8e-3)
  _close(ours, exact, 2e-6)
  _close(ours, np.asarray(theirs, np.float64), 8e-3)


def test_gradients_match_float64_and_jax():
  rs = np.random.RandomState(2)
  x = _bf16(rs, (3, 41, 70)).astype(jnp.float32)
  w = _bf16(rs, (70, 53)).astype(jnp.float32)
  dy = _bf16(rs, (3, 41, 53))
  loss = lambda fn: lambda x, w: jnp.sum(fn(x, w) * dy.astype(jnp.float32))
  dx, dw = jax.jit(jax.grad(loss(cpu_matmul.matmul), argnums=(0, 1)))(x, w)
  assert dx.dtype == jnp.float32 and dw.dtype == jnp.float32
  x2, dy2 = _f64(x).reshape(-1, 70), _f64(dy).reshape(-1, 53)
  _close(dx, (dy2 @ _f64(w).T).reshape(3, 41, 70), 8e-3)  # dX is rounded to x's bfloat16 cast
  _close(dw, x2.T @ dy2, 2e-6)  # dW summed and returned in float32
  ref_dx, ref_dw = jax.grad(loss(cpu_matmul.reference), argnums=(0, 1))(x, w)
  _close(dx, _f64(ref_dx), 1e-2)
  _close(dw, _f64(ref_dw), 1e-2)


def test_vmap_and_its_gradient():
  rs = np.random.RandomState(3)
  x, ws = _bf16(rs, (3, 10, 24)), _bf16(rs, (3, 24, 9)).astype(jnp.float32)
  _close(jax.vmap(cpu_matmul.matmul, in_axes=(0, None))(x, ws[0]), _f64(x) @ _f64(ws[0]), 2e-6)
  _close(jax.vmap(cpu_matmul.matmul)(x, ws), _f64(x) @ _f64(ws), 2e-6)
  grads = jax.vmap(jax.grad(lambda x, w: jnp.sum(cpu_matmul.matmul(x, w)), argnums=1))(x, ws)
  _close(grads, np.broadcast_to(_f64(x).sum(1)[:, :, None], ws.shape), 2e-6)


def test_choice_modes(monkeypatch):
  assert cpu_matmul.choose("auto", jnp.bfloat16) and cpu_matmul.choose("on", jnp.bfloat16)
  assert not cpu_matmul.choose("off", jnp.bfloat16) and not cpu_matmul.choose("auto", jnp.float32)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("data",))):
    assert not cpu_matmul.choose("auto", jnp.bfloat16)
    with pytest.raises(ConfigError, match="mesh of 2 devices"):
      cpu_matmul.choose("on", jnp.bfloat16)
  monkeypatch.setattr(cpu_matmul, "available", lambda: (False, "this CPU lacks AVX512-BF16"))
  assert not cpu_matmul.choose("auto", jnp.bfloat16)
  with pytest.raises(ConfigError, match="cpu_matmul='on' cannot run: this CPU lacks AVX512-BF16"):
    cpu_matmul.choose("on", jnp.bfloat16)
  x, w = jnp.ones((4, 8), jnp.bfloat16), jnp.ones((8, 3))
  np.testing.assert_array_equal(cpu_matmul.matmul(x, w), cpu_matmul.reference(x, w))


def test_config_checks():
  with pytest.raises(ModelConfigError, match="cpu_matmul"):
    ModelConfig(cpu_matmul="yes")
  with pytest.raises(ModelConfigError, match="compute_dtype='float32'"):
    ModelConfig(cpu_matmul="on")


# ----------------------------------------------------------------------------- the model

CFG = ModelConfig(vocab_size=101, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=96)
HOOKS = pe.make("rope").hooks(head_dim=16, n_heads=4, d_model=64, seq_len=40)


@pytest.fixture(scope="module")
def params():
  return skeleton.init_params(CFG, HOOKS, jax.random.key(0))


def _logits(cfg, params, tokens):
  return jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t, hooks=HOOKS))(params, tokens)


def _tokens():
  return jax.random.randint(jax.random.key(1), (2, 40), 0, CFG.vocab_size)


def test_float32_model_unchanged(params):
  """float32 never reaches the kernel: 'auto' (the default) gives the 'off' logits bit for bit."""
  text = jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t, hooks=HOOKS)).lower(params, _tokens())
  assert cpu_matmul.TARGET not in text.as_text()
  np.testing.assert_array_equal(_logits(CFG, params, _tokens()),
                                _logits(dataclasses.replace(CFG, cpu_matmul="off"), params, _tokens()))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_bfloat16_model_on_the_kernel(params, scan_layers):
  bf16 = dataclasses.replace(CFG, compute_dtype="bfloat16", scan_layers=scan_layers)
  on, off = dataclasses.replace(bf16, cpu_matmul="on"), dataclasses.replace(bf16, cpu_matmul="off")
  reference = np.asarray(_logits(CFG, params, _tokens()), np.float64)
  _close(_logits(on, params, _tokens()), reference, 2e-2)
  _close(_logits(on, params, _tokens()), np.asarray(_logits(off, params, _tokens()), np.float64), 2e-2)
  loss = lambda cfg: lambda p: jnp.mean(Transformer(cfg).apply({"params": p}, _tokens(), hooks=HOOKS) ** 2)
  assert cpu_matmul.TARGET in jax.jit(jax.grad(loss(on))).lower(params).as_text()
  grads_on, grads_32 = jax.jit(jax.grad(loss(on)))(params), jax.jit(jax.grad(loss(CFG)))(params)
  for g_on, g_32 in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_32)):
    assert g_on.dtype == jnp.float32
    _close(g_on, np.asarray(g_32, np.float64), 5e-2)


def test_forced_on_where_it_cannot_run(params, monkeypatch):
  monkeypatch.setattr(cpu_matmul, "available", lambda: (False, "no C++ compiler to build the bfloat16 CPU kernel"))
  cfg = dataclasses.replace(CFG, compute_dtype="bfloat16")
  with pytest.raises(ConfigError, match="no C\\+\\+ compiler"):
    _logits(dataclasses.replace(cfg, cpu_matmul="on"), params, _tokens())
  np.testing.assert_array_equal(_logits(cfg, params, _tokens()),  # 'auto' falls back to XLA's dot
                                _logits(dataclasses.replace(cfg, cpu_matmul="off"), params, _tokens()))
