"""The C++ CPU flash-attention kernel (rope_lab/kernels) against the reference path and PyTorch.

The kernel is built on first use with the machine's C++ compiler (a few seconds, cached in
``~/.cache/rope_lab/kernels``); the suite needs one, as the lab's CPU evaluation does.
Lengths cross the kernel's blocks (192 queries, 256 keys, 16-key tiles) without being
multiples of any of them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rope_lab import pe

from rope_lab.model import attention

from rope_lab.model import attention_fused
from rope_lab.errors import ConfigError
from rope_lab.evaluate import perplexity
from rope_lab.model.kernels import cpu_flash
from rope_lab.model.skeleton import ModelConfig, Transformer

LENGTH = 459  # 3 query blocks (the last partial), 2 key blocks, a partial tile
ATOL = 2e-5
LONGROPE = {"short_factor": tuple(np.linspace(1.0, 3.0, 16)), "long_factor": tuple(np.geomspace(1.0, 8.0, 16)),
            "factor": 4.0, "original_max_position_embeddings": 64}  # one factor per pair (head_dim 32)
ROPE_FAMILY = [  # (name, parameters, (query heads, kv heads)); yarn and longrope scale the logits
    ("rope", {}, (4, 2)),
    ("yarn", {"factor": 4.0, "original_max_position_embeddings": 64}, (4, 4)),
    ("xpos", {"scale_base": 128.0}, (6, 2)),
    ("longrope", LONGROPE, (4, 1)),
]


@pytest.fixture(autouse=True)
def full_float32_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def _qkv(seed, n_heads, n_kv, head_dim, length=LENGTH, batch=2, scale=1.0):
  rs = np.random.RandomState(seed)
  shapes = [(batch, length, n_heads, head_dim), (batch, length, n_kv, head_dim), (batch, length, n_kv, head_dim)]
  return tuple(jnp.asarray(rs.standard_normal(s) * scale, jnp.float32) for s in shapes)


def _meta(batch, length):
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  return attention.TokenMeta(positions, positions, jnp.ones_like(positions), jnp.zeros_like(positions))


def _hooks(name, params, n_heads, head_dim, length=LENGTH):
  return pe.make(name, **params).hooks(head_dim=head_dim, n_heads=n_heads, d_model=n_heads * head_dim,
                                       seq_len=length)


def _numpy_attention(q, k, v, scale):
  """softmax(scale q.k^T + causal mask) v in float64, kv heads shared by consecutive query heads."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  group = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  scores = np.einsum("blhd,bmhd->bhlm", q, k) * scale
  length = q.shape[1]
  scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
  scores -= scores.max(-1, keepdims=True)
  probs = np.exp(scores)
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhlm,bmhd->blhd", probs, v)


def test_the_kernel_builds_and_loads_here():
  ready, detail = cpu_flash.available()
  assert ready, detail


@pytest.mark.parametrize("head_dim, heads, length", [
    (16, (2, 2), 200), (32, (4, 4), LENGTH), (48, (3, 1), 130), (64, (9, 3), 300), (128, (2, 1), 193),
    (256, (2, 2), 70), (32, (4, 2), 1),
])
def test_forward_equals_float64_attention_for_every_head_dim(head_dim, heads, length):
  q, k, v = _qkv(head_dim, *heads, head_dim, length=length, scale=2.0)
  scale = head_dim ** -0.5
  got = jax.jit(lambda q, k, v: cpu_flash.attention(q, k, v, scale))(q, k, v)
  np.testing.assert_allclose(got, _numpy_attention(q, k, v, scale), atol=ATOL, rtol=1e-5)


def test_forward_equals_pytorch_sdpa_with_grouped_kv_heads():
  """An implementation outside the project: PyTorch's fused causal attention."""
  q, k, v = _qkv(1, 9, 3, 64, length=700, batch=1)
  got = jax.jit(lambda q, k, v: cpu_flash.attention(q, k, v, 0.125))(q, k, v)
  to_torch = lambda x: torch.from_numpy(np.array(x)).transpose(1, 2)
  want = torch.nn.functional.scaled_dot_product_attention(to_torch(q), to_torch(k), to_torch(v), is_causal=True,
                                                          enable_gqa=True, scale=0.125)
  np.testing.assert_allclose(got, want.transpose(1, 2).numpy(), atol=ATOL, rtol=1e-5)


def test_large_logits_stay_finite_and_exact():
  """Scores in the hundreds: the running max keeps every exp in range (exp(300) would
  overflow float32), and keys whose weight underflows contribute nothing."""
  q, k, v = _qkv(2, 2, 2, 32, length=520, batch=1, scale=4.0)
  assert float(jnp.max(jnp.abs(jnp.einsum("blhd,bmhd->bhlm", q, k)))) > 300
  got = np.asarray(jax.jit(lambda q, k, v: cpu_flash.attention(q, k, v, 1.0))(q, k, v))
  assert np.isfinite(got).all()
  # float32 logits near 300 carry rounding errors near 2e-5, which scale the weights by as much.
  np.testing.assert_allclose(got, _numpy_attention(q, k, v, 1.0), atol=5e-4)


@pytest.mark.parametrize("name, params, heads", ROPE_FAMILY, ids=[c[0] for c in ROPE_FAMILY])
def test_fused_attention_on_cpu_matches_the_reference_path_with_gradients(name, params, heads):
  head_dim = 32
  q, k, v = _qkv(3, *heads, head_dim)
  cotangent = jnp.asarray(np.random.RandomState(4).standard_normal(q.shape), jnp.float32)
  hooks = _hooks(name, params, heads[0], head_dim)
  meta = _meta(q.shape[0], LENGTH)
  choice = attention_fused.KernelChoice("cpu_flash", "test")

  @jax.jit
  def fused(q, k, v):
    def f(q, k, v):
      rot = attention.rotate(hooks, q, k, meta.positions)
      return attention_fused.attend(choice, rot.q.reshape(q.shape), rot.k, v, meta.segments, meta.positions,
                                    hooks, packed=False, soft_cap=None)
    out, pullback = jax.vjp(f, q, k, v)
    return out, pullback(cotangent)

  @jax.jit
  def reference(q, k, v):
    f = lambda q, k, v: attention.attend(q, k, v, meta, hooks, implementation="reference")
    out, pullback = jax.vjp(f, q, k, v)
    return out, pullback(cotangent)

  (out, grads), (want, want_grads) = fused(q, k, v), reference(q, k, v)
  np.testing.assert_allclose(out, want, atol=ATOL)
  for got, expected, what in zip(grads, want_grads, "qkv"):
    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"d{what}")


def _features(**on):
  values = dict(packed=False, alibi=False, self_extend=False, windows_possible=False, soft_cap=False,
                half_precision=False, head_dim=64, n_heads=9, n_kv_heads=3)
  return attention_fused.Features(**{**values, **on})


@pytest.mark.parametrize("features, kernel, reason", [
    ({}, "cpu_flash", "auto"),
    ({"half_precision": True}, "cpu_flash", "auto"),  # computed in float32 inside
    ({"packed": True}, "chunked", "segment ids"),
    ({"alibi": True}, "chunked", "ALiBi"),
    ({"soft_cap": True}, "chunked", "soft cap"),
    ({"self_extend": True}, "chunked", "SelfExtend"),
    ({"head_dim": 40}, "chunked", "head_dim 40"),
    ({"n_heads": 4, "n_kv_heads": 3}, "chunked", "evenly"),
])
def test_auto_choice_on_cpu_runs_the_kernel_where_it_can_and_says_why_not(features, kernel, reason):
  choice = attention_fused.choose_kernel("auto", "cpu", _features(**features))
  assert choice.kernel == kernel and reason in choice.reason, choice


def test_forcing_the_kernel_where_it_cannot_run_is_an_error_naming_the_reason(monkeypatch):
  with pytest.raises(ConfigError, match="fused_kernel='cpu_flash'.*CPU only"):
    attention_fused.choose_kernel("cpu_flash", "gpu", _features())
  with pytest.raises(ConfigError, match="segment ids"):
    attention_fused.choose_kernel("cpu_flash", "cpu", _features(packed=True))
  monkeypatch.setattr(cpu_flash, "available", lambda: (False, "no C++ compiler to build the CPU kernel"))
  with pytest.raises(ConfigError, match="no C\\+\\+ compiler"):
    attention_fused.choose_kernel("cpu_flash", "cpu", _features())
  choice = attention_fused.choose_kernel("auto", "cpu", _features())
  assert choice.kernel == "chunked" and "no C++ compiler" in choice.reason


def test_a_missing_compiler_or_a_failed_build_is_reported_not_raised(monkeypatch, tmp_path):
  monkeypatch.setattr(cpu_flash, "_compiler", lambda: None)
  ready, detail = cpu_flash.available.__wrapped__()
  assert not ready and "no C++ compiler" in detail
  monkeypatch.undo()
  broken = tmp_path / "broken.cc"
  broken.write_text("this is not C++\n")
  monkeypatch.setattr(cpu_flash, "SOURCE", str(broken))
  monkeypatch.setenv("ROPE_LAB_KERNEL_DIR", str(tmp_path / "kernels"))
  ready, detail = cpu_flash.available.__wrapped__()
  assert not ready and "could not be built" in detail and "broken.cc" in detail
  assert not list((tmp_path / "kernels").glob("*.so"))  # no half-written library left behind


def test_model_evaluation_on_cpu_runs_the_kernel_and_scores_as_the_reference():
  """eval_model_config picks the fused path for long windows on CPU; unpacked rows run the
  kernel, and the logits equal the reference attention's."""
  length = perplexity.CHUNKED_FROM
  shape = dict(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, mlp_dim=128)
  hooks = pe.make("yarn", factor=4.0, original_max_position_embeddings=128).hooks(
      head_dim=16, n_heads=4, d_model=64, seq_len=length)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 64, (1, length)), jnp.int32)
  reference = Transformer(ModelConfig(**shape, attention="reference"))
  params = reference.init(jax.random.key(0), tokens, hooks=hooks)
  want = jax.jit(reference.apply)(params, tokens, hooks=hooks)
  cfg = perplexity.eval_model_config(ModelConfig(**shape), length)
  assert (cfg.attention, cfg.fused_kernel) == ("fused", "auto")
  attention_fused.CHOICES.clear()
  got = jax.jit(Transformer(cfg).apply)(params, tokens, hooks=hooks)
  assert {c.kernel for c in attention_fused.CHOICES} == {"cpu_flash"}
  np.testing.assert_allclose(got, want, atol=1e-4)

