"""The fused attention kernels against the reference path, and the rule that picks them.

The two Pallas kernels run here in interpret mode (the Pallas interpreter executes the
kernel body with jnp on the CPU), so their block loops, online softmax, segment masks and
backward kernels are checked on every machine. cuDNN has no CPU implementation; its call
is checked through the same ``jax.nn.dot_product_attention`` arguments with
``implementation='xla'``, which is what the cuDNN custom call must reproduce.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab import pe

from rope_lab.model import attention

from rope_lab.model import attention_fused
from rope_lab.errors import ConfigError
from rope_lab.model.skeleton import ModelConfig, Transformer
from tests.test_attention import B, DH, L, hooks_for, meta_for, qkv


ATOL = 2e-5
LONGROPE = {"short_factor": (1.0, 1.5, 2.0, 3.0), "long_factor": (1.0, 2.0, 4.0, 8.0), "factor": 4.0,
            "original_max_position_embeddings": 8}
# RoPE-family encodings (yarn and longrope bring a temperature != 1), grouped queries.
ROPE_FAMILY = [
    ("rope", {}, (4, 2)),
    ("yarn", {"factor": 4.0, "original_max_position_embeddings": 8}, (4, 2)),
    ("xpos", {"scale_base": 16.0}, (4, 4)),
    ("longrope", LONGROPE, (4, 1)),
]


@pytest.fixture(autouse=True)
def full_float32_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def _interpreted(kernel):
  return attention_fused.KernelChoice(kernel, "test", interpret=True)


@functools.partial(jax.jit, static_argnames=("kernel", "packed"))
def fused_and_grads(q, k, v, cotangent, meta, hooks, kernel, packed=True):
  def f(q, k, v):
    rot = attention.rotate(hooks, q, k, meta.positions)
    return attention_fused.attend(_interpreted(kernel), rot.q.reshape(q.shape), rot.k, v, meta.segments,
                                  meta.positions, hooks, packed=packed, soft_cap=None)
  out, pullback = jax.vjp(f, q, k, v)
  return out, pullback(cotangent)


@functools.partial(jax.jit, static_argnames=("soft_cap",))
def reference_and_grads(q, k, v, cotangent, meta, hooks, soft_cap=None):
  f = lambda q, k, v: attention.attend(q, k, v, meta, hooks, implementation="reference", soft_cap=soft_cap)
  out, pullback = jax.vjp(f, q, k, v)
  return out, pullback(cotangent)


def _check_against_reference(kernel, name, params, heads, packed=True):
  n_heads, n_kv = heads
  hooks = hooks_for(name, params, n_heads)
  q, k, v = qkv(0, n_heads, n_kv)
  meta = meta_for(hooks, packed=packed)
  cotangent = jnp.asarray(np.random.RandomState(5).standard_normal(q.shape), jnp.float32)
  out, grads = fused_and_grads(q, k, v, cotangent, meta, hooks, kernel, packed=packed)
  want, want_grads = reference_and_grads(q, k, v, cotangent, meta, hooks)
  np.testing.assert_allclose(out, want, atol=ATOL, err_msg=f"{kernel} {name} forward")
  for got, ref, what in zip(grads, want_grads, "qkv"):
    np.testing.assert_allclose(got, ref, atol=ATOL, err_msg=f"{kernel} {name} d{what}")


@pytest.mark.parametrize("case", ROPE_FAMILY, ids=lambda c: c[0])
def test_pallas_gpu_kernel_matches_reference_on_packed_rows(case):
  _check_against_reference("pallas_gpu", *case)


@pytest.mark.parametrize("case", ROPE_FAMILY[:2], ids=lambda c: c[0])
def test_splash_kernel_matches_reference_on_packed_rows(case):
  _check_against_reference("splash", *case)


def test_splash_applies_the_soft_cap_like_the_reference():
  hooks = hooks_for("rope", {})
  q, k, v = qkv(2, 4, 2)
  q = q * 4.0  # logits large enough for the cap to matter
  meta = meta_for(hooks)
  @jax.jit
  def capped(q, k, v, meta, hooks):
    rot = attention.rotate(hooks, q, k, meta.positions)
    return attention_fused.attend(_interpreted("splash"), rot.q.reshape(q.shape), rot.k, v, meta.segments,
                                  meta.positions, hooks, packed=True, soft_cap=2.0)
  got = capped(q, k, v, meta, hooks)
  want = reference_and_grads(q, k, v, q, meta, hooks, soft_cap=2.0)[0]
  uncapped = reference_and_grads(q, k, v, q, meta, hooks)[0]
  np.testing.assert_allclose(got, want, atol=ATOL)
  assert not np.allclose(want, uncapped, atol=1e-2)


@pytest.mark.parametrize("name, params, heads, packed", [
    ("rope", {}, (4, 2), False),
    ("yarn", {"factor": 4.0, "original_max_position_embeddings": 8}, (4, 2), False),
    ("alibi", {}, (6, 3), True),  # bias and segment mask together
])
def test_cudnn_call_arguments_reproduce_the_reference(name, params, heads, packed):
  n_heads, n_kv = heads
  hooks = hooks_for(name, params, n_heads)
  q, k, v = qkv(1, n_heads, n_kv)
  meta = meta_for(hooks, packed=packed)
  @jax.jit
  def through_the_cudnn_call(q, k, v, meta, hooks):
    rot = attention.rotate(hooks, q, k, meta.positions)
    return attention_fused.cudnn(rot.q.reshape(q.shape), rot.k, v, meta.segments, meta.positions, hooks,
                                 packed=packed, implementation="xla")
  got = through_the_cudnn_call(q, k, v, meta, hooks)
  want = reference_and_grads(q, k, v, q, meta, hooks)[0]
  np.testing.assert_allclose(got, want, atol=ATOL)


def _features(**on):
  values = dict(packed=False, alibi=False, self_extend=False, windows_possible=False, soft_cap=False,
                half_precision=True)
  return attention_fused.Features(**{**values, **on})


@pytest.mark.parametrize("platform, features, kernel", [
    ("gpu", {}, "cudnn"),
    ("gpu", {"packed": True}, "pallas_gpu"),
    ("gpu", {"alibi": True}, "cudnn"),
    ("gpu", {"alibi": True, "packed": True}, "cudnn"),  # the segment mask goes to cuDNN
    ("gpu", {"soft_cap": True}, "chunked"),
    ("gpu", {"half_precision": False}, "pallas_gpu"),  # cuDNN takes 16-bit inputs only
    ("gpu", {"half_precision": False, "alibi": True}, "chunked"),
    ("gpu", {"self_extend": True}, "chunked"),
    ("gpu", {"windows_possible": True, "packed": True}, "chunked"),
    ("tpu", {"packed": True}, "splash"),
    ("tpu", {"soft_cap": True}, "splash"),
    ("tpu", {"alibi": True}, "chunked"),
    ("tpu", {"self_extend": True}, "chunked"),
    ("cpu", {"packed": True}, "chunked"),  # the CPU kernel: tests/test_cpu_flash.py
])
def test_auto_choice_follows_what_each_kernel_can_express(platform, features, kernel):
  choice = attention_fused.choose_kernel("auto", platform, _features(**features))
  assert choice.kernel == kernel, choice
  assert not choice.interpret


def test_forced_kernels_run_interpreted_off_platform_and_refuse_what_they_cannot_express():
  forced = attention_fused.choose_kernel("splash", "tpu", _features(packed=True))
  assert (forced.kernel, forced.interpret) == ("splash", False)
  off_platform = attention_fused.choose_kernel("pallas_gpu", "cpu", _features())
  assert (off_platform.kernel, off_platform.interpret) == ("pallas_gpu", True)
  with pytest.raises(ConfigError, match="fused_kernel='cudnn' needs a GPU"):
    attention_fused.choose_kernel("cudnn", "cpu", _features())
  with pytest.raises(ConfigError, match="splash.*ALiBi"):
    attention_fused.choose_kernel("splash", "tpu", _features(alibi=True))
  with pytest.raises(ConfigError, match="bfloat16 or float16"):
    attention_fused.choose_kernel("cudnn", "gpu", _features(half_precision=False))
  with pytest.raises(ConfigError, match="SelfExtend"):
    attention_fused.choose_kernel("cudnn", "gpu", _features(self_extend=True))
  with pytest.raises(ConfigError, match="ModelConfig.fused_kernel"):
    ModelConfig(attention="fused", fused_kernel="flash9")


def test_model_with_fused_attention_records_its_kernel_and_matches_reference():
  hooks = pe.make("yarn", factor=4.0, original_max_position_embeddings=8).hooks(
      head_dim=8, n_heads=4, d_model=32, seq_len=L)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 64, (B, L)), jnp.int32)
  segments = jnp.asarray(np.stack([[1] * 10 + [2] * (L - 10), [1] * L]), jnp.int32)
  shape = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, mlp_dim=64)
  reference = Transformer(ModelConfig(**shape, attention="reference"))
  params = reference.init(jax.random.key(0), tokens, hooks=hooks)
  want = jax.jit(functools.partial(reference.apply, segment_ids=segments))(params, tokens, hooks=hooks)
  for kernel, expected in (("auto", "chunked"), ("pallas_gpu", "pallas_gpu")):  # CPU: fallback / interpreted
    attention_fused.CHOICES.clear()
    fused = Transformer(ModelConfig(**shape, attention="fused", fused_kernel=kernel))
    got = jax.jit(functools.partial(fused.apply, segment_ids=segments))(params, tokens, hooks=hooks)
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=kernel)
    assert {c.kernel for c in attention_fused.CHOICES} == {expected}
