"""The decoder-only Transformer LM every experiment trains and evaluates (Flax Linen).

tokens -> embed (+ absolute table) -> n_layers x [x + attn(norm(x)); x + mlp(norm(x))]
-> final_norm -> lm_head (or embed^T when tied) -> float32 logits.

The positional encoding is consulted only through its :class:`rope_lab.pe.Hooks` value,
passed as a traced argument: the skeleton never branches on a method's name, switching
between encodings that only change frequencies or scales does not recompile, and
changing the encoding of a trained model keeps its parameters (learned APE aside).

Parameters (D = d_model, H = n_heads, K = n_kv_heads, Dh = head_dim, F = mlp_dim,
V = vocab_size, N = hooks.learned_length), all float32, with their logical axes::

  embed/embedding              [V, D]       (vocab, embed)
  pos_embed                    [N, D]       (None, embed)       only for learned APE
  layers_{i}/attn_norm/scale   [D]          (norm)              (+ bias [D] for LayerNorm)
  layers_{i}/attn/q/kernel     [D, H, Dh]   (embed, heads, head_dim)      q/bias [H, Dh] (heads, head_dim)
  layers_{i}/attn/k/kernel     [D, K, Dh]   (embed, kv_heads, head_dim)   k/bias [K, Dh] (kv_heads, head_dim)
  layers_{i}/attn/v/kernel     [D, K, Dh]   (embed, kv_heads, head_dim)   v/bias [K, Dh]
  layers_{i}/attn/o/kernel     [H, Dh, D]   (heads, head_dim, embed)      no bias
  layers_{i}/mlp_norm/scale    [D]          (norm)
  layers_{i}/mlp/gate/kernel   [D, F]       (embed, mlp)        swiglu only
  layers_{i}/mlp/up/kernel     [D, F]       (embed, mlp)
  layers_{i}/mlp/down/kernel   [F, D]       (mlp, embed)
  final_norm/scale             [D]          (norm)
  lm_head/kernel               [D, V]       (embed, vocab)      absent when tied

Parameter logical axes: vocab, embed, heads, kv_heads, head_dim, mlp, norm (None:
replicated). Activation logical axes: batch, length, embed, heads, kv_heads, head_dim,
mlp, vocab. Both are no-ops until a rule table and a mesh are in force.

Hugging Face Llama/Mistral/Qwen2 mapping (torch Linear weights are [out, in]; both use
the rotate-half rotary layout, so pair them with ``layout='half'`` hooks)::

  embed_tokens.weight [V, D]          -> embed/embedding
  q_proj.weight [H*Dh, D]             -> q/kernel = W.T.reshape(D, H, Dh)   (k, v: K heads)
  q_proj.bias [H*Dh] (Qwen2)          -> q/bias = b.reshape(H, Dh)          (k, v alike)
  o_proj.weight [D, H*Dh]             -> o/kernel = W.T.reshape(H, Dh, D)
  gate_proj / up_proj.weight [F, D]   -> gate / up kernel = W.T;  down_proj.weight [D, F] -> W.T
  input_layernorm.weight              -> attn_norm/scale; post_attention_layernorm -> mlp_norm/scale
  norm.weight -> final_norm/scale;    lm_head.weight [V, D] -> lm_head/kernel = W.T
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rope_lab.model import attention

from rope_lab.model import attention_fused

from rope_lab.model import layer_scan
from rope_lab.model.kernels import cpu_matmul
from rope_lab.errors import ConfigError, check
from rope_lab.pe import apply as pe_apply
from rope_lab.pe.base import Hooks

MLPS = ("swiglu", "gelu")
NORMS = ("rms", "layer")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ModelConfigError(ConfigError):
  """A ModelConfig field is invalid; the message names it."""


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and switches of the Transformer. Defaults: the benchmark's Llama-style model."""

  vocab_size: int = 256
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int | None = None  # None: n_heads (multi-head); fewer: grouped-query attention
  head_dim: int | None = None  # None: d_model // n_heads
  mlp_dim: int = 1024
  mlp: str = "swiglu"  # "swiglu" (down(silu(gate x) * up x)) or "gelu" (down(gelu(up x)), exact erf GELU)
  norm: str = "rms"  # "rms" (RMSNorm) or "layer" (LayerNorm with bias)
  norm_eps: float = 1e-6
  tied_embeddings: bool = False  # logits = x @ embed^T, no lm_head
  qkv_bias: bool = False  # biases on q, k, v (Qwen2); never on o
  logit_soft_cap: float | None = None  # c tanh(s / c) on attention logits; None: off
  attention: str = "dot_product"  # one of attention.IMPLEMENTATIONS
  fused_kernel: str = "auto"  # attention='fused': "auto" or a kernel of attention_fused.KERNELS (forced)
  chunk_size: int = 512  # query/key block length of the 'chunked' implementation
  compute_dtype: str = "float32"  # "float32" or "bfloat16"; parameters stay float32
  # bfloat16 only: the dense layers and the output layer on rope_lab's AVX512-BF16 CPU kernel
  # (rope_lab.model.kernels.cpu_matmul). "auto": where it can run, else XLA's dot (logged once);
  # "on": forced (a ConfigError naming why where it cannot run); "off": XLA's dot.
  cpu_matmul: str = "auto"
  segment_masking: bool = True  # no attention across packed segments
  init_std: float = 0.02  # stddev of the normal initialiser of every kernel and embedding
  # Token embeddings are multiplied by this before any absolute table is added. Vaswani et al.
  # (2017, §3.4) and Gemma use sqrt(d_model): a fixed unit-amplitude sinusoid table added to
  # embeddings initialised at std init_std would otherwise swamp the tokens (configs set it with
  # the sinusoidal table). The output layer never sees it (tied logits use the raw table).
  embedding_multiplier: float = 1.0
  # Mistral/Qwen2's sliding_window W: a query sees itself and the W - 1 tokens before it
  # (transformers' convention); None: every earlier token.
  sliding_window: int | None = None
  # True: the layers run as one lax.scan over their stacked weights (one period of a
  # per-layer pattern compiled once: compile time no longer grows with depth; one copy of
  # the layer weights per call; rope_lab.model.layer_scan). Same numbers; same parameter tree.
  # False: a Python loop, every layer in the program (what LoRA's per-module adapters need).
  scan_layers: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_dim", "chunk_size"):
      value = getattr(self, name)
      check(_is_int(value) and value >= 1, f"ModelConfig.{name}", "an int >= 1", value, ModelConfigError)
    if self.n_kv_heads is None:
      object.__setattr__(self, "n_kv_heads", self.n_heads)
    check(_is_int(self.n_kv_heads) and self.n_kv_heads >= 1, "ModelConfig.n_kv_heads", "an int >= 1", self.n_kv_heads,
          ModelConfigError)
    check(self.n_heads % self.n_kv_heads == 0, "ModelConfig.n_kv_heads", f"a divisor of n_heads={self.n_heads}",
          self.n_kv_heads, ModelConfigError)
    if self.head_dim is None:
      check(self.d_model % self.n_heads == 0, "ModelConfig.d_model",
            f"divisible by n_heads={self.n_heads} (or set head_dim)", self.d_model, ModelConfigError)
      object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
    check(_is_int(self.head_dim) and self.head_dim >= 1, "ModelConfig.head_dim", "an int >= 1", self.head_dim,
          ModelConfigError)
    check(self.mlp in MLPS, "ModelConfig.mlp", f"one of {MLPS}", self.mlp, ModelConfigError)
    check(self.norm in NORMS, "ModelConfig.norm", f"one of {NORMS}", self.norm, ModelConfigError)
    check(_is_real(self.norm_eps) and self.norm_eps > 0, "ModelConfig.norm_eps", "a number > 0", self.norm_eps,
          ModelConfigError)
    check(self.attention in attention.IMPLEMENTATIONS, "ModelConfig.attention", f"one of {attention.IMPLEMENTATIONS}",
          self.attention, ModelConfigError)
    check(self.fused_kernel in attention_fused.CHOICES_ALLOWED, "ModelConfig.fused_kernel",
          f"one of {attention_fused.CHOICES_ALLOWED}", self.fused_kernel, ModelConfigError)
    check(self.compute_dtype in DTYPES, "ModelConfig.compute_dtype", f"one of {tuple(DTYPES)}", self.compute_dtype,
          ModelConfigError)
    check(self.cpu_matmul in cpu_matmul.MODES, "ModelConfig.cpu_matmul", f"one of {cpu_matmul.MODES}",
          self.cpu_matmul, ModelConfigError)
    check(self.cpu_matmul != "on" or self.compute_dtype == "bfloat16", "ModelConfig.cpu_matmul",
          "'auto' or 'off' with compute_dtype='float32' (the kernel computes in bfloat16)", self.cpu_matmul,
          ModelConfigError)
    check(_is_real(self.init_std) and self.init_std > 0, "ModelConfig.init_std", "a number > 0", self.init_std,
          ModelConfigError)
    check(_is_real(self.embedding_multiplier) and self.embedding_multiplier > 0, "ModelConfig.embedding_multiplier",
          "a number > 0", self.embedding_multiplier, ModelConfigError)
    for name in ("tied_embeddings", "qkv_bias", "segment_masking", "scan_layers"):
      check(isinstance(getattr(self, name), bool), f"ModelConfig.{name}", "a bool", getattr(self, name),
            ModelConfigError)
    if self.sliding_window is not None:
      check(_is_int(self.sliding_window) and self.sliding_window >= 1, "ModelConfig.sliding_window",
            "None or an int >= 1", self.sliding_window, ModelConfigError)
    if self.logit_soft_cap is not None:
      check(_is_real(self.logit_soft_cap) and self.logit_soft_cap > 0, "ModelConfig.logit_soft_cap", "> 0 or None",
            self.logit_soft_cap, ModelConfigError)
      check(self.attention != "dot_product", "ModelConfig.logit_soft_cap",
            "None with attention='dot_product' (jax.nn.dot_product_attention has no soft cap)",
            self.logit_soft_cap, ModelConfigError)

  @property
  def dtype(self):
    return DTYPES[self.compute_dtype]


def check_hooks(cfg: ModelConfig, hooks: Hooks) -> None:
  """Raises ValueError when ``hooks`` were resolved for another model shape."""
  problems = []
  if hooks.rotary is not None and hooks.rotary.rotary_dim > cfg.head_dim:
    problems.append(f"rotary_dim {hooks.rotary.rotary_dim} > head_dim {cfg.head_dim}")
  if hooks.alibi_slopes is not None and hooks.alibi_slopes.shape != (cfg.n_heads,):
    problems.append(f"alibi_slopes shape {hooks.alibi_slopes.shape} != ({cfg.n_heads},)")
  if hooks.sinusoid_inv_freq is not None and 2 * hooks.sinusoid_inv_freq.shape[-1] != cfg.d_model:
    problems.append(f"sinusoid table width {2 * hooks.sinusoid_inv_freq.shape[-1]} != d_model {cfg.d_model}")
  if hooks.absolute == "learned" and hooks.learned_length < 1:
    problems.append("learned absolute table with learned_length < 1")
  if problems:
    raise ValueError("hooks do not fit this model (pass head_dim, n_heads, d_model of the model to "
                     "encoding.hooks): " + "; ".join(problems))


def token_meta(
    hooks: Hooks, positions_BxL, segment_ids_BxL, *, segment_masking: bool, rng: jax.Array | None
) -> tuple[attention.TokenMeta, jnp.ndarray]:
  """(attention's per-token metadata, float positions for the absolute table)."""
  int_pos, float_pos, windows = pe_apply.map_positions(hooks.positions, positions_BxL, rng=rng)
  index = jnp.broadcast_to(jnp.arange(positions_BxL.shape[1], dtype=jnp.int32), positions_BxL.shape)
  if segment_ids_BxL is None or not segment_masking:
    segments = jnp.zeros_like(index)
  else:
    segments = segment_ids_BxL.astype(jnp.int32)
  return attention.TokenMeta(index, int_pos, segments, windows.astype(jnp.int32)), float_pos


def _init(std: float, axes: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class Dense(nn.Module):
  """y = x . W (+ b) contracting the last ``n_in`` axes of x; W is [in..., out...]."""

  features: tuple[int, ...]
  axes: tuple  # logical names of W's axes, inputs first
  n_in: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32  # compute dtype of inputs and kernel
  out_dtype: Any = None  # accumulate and return in this dtype (None: dtype)
  init_std: float = 0.02
  cpu_matmul: str = "off"  # ModelConfig.cpu_matmul: the bfloat16 CPU kernel ("auto", "on", "off")

  @nn.compact
  def __call__(self, x):
    lead, fan_in = x.shape[: x.ndim - self.n_in], x.shape[x.ndim - self.n_in:]
    kernel = self.param("kernel", _init(self.init_std, self.axes), fan_in + tuple(self.features), jnp.float32)
    # One 2-D GEMM [tokens, in] x [in, out]: XLA:CPU runs the weight gradient of a dot that
    # contracts both batch and length ~3x slower than the same product on flattened tokens.
    x_2d = x.astype(self.dtype).reshape(math.prod(lead), math.prod(fan_in))
    if cpu_matmul.choose(self.cpu_matmul, self.dtype):  # float32 sums, the kernel cast to bfloat16 at the call
      y = cpu_matmul.matmul(x_2d, kernel.reshape(math.prod(fan_in), math.prod(self.features)),
                            self.out_dtype or self.dtype).reshape(lead + tuple(self.features))
    else:
      w_2d = kernel.astype(self.dtype).reshape(math.prod(fan_in), math.prod(self.features))
      y = jnp.dot(x_2d, w_2d, preferred_element_type=self.out_dtype).reshape(lead + tuple(self.features))
    if self.use_bias:
      bias_init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes[self.n_in:])
      y = y + self.param("bias", bias_init, tuple(self.features), jnp.float32).astype(y.dtype).reshape(
          (1,) * len(lead) + tuple(self.features))
    return y


class Norm(nn.Module):
  """RMSNorm x / sqrt(mean(x^2) + eps) * g, or LayerNorm (x - mu) / sqrt(var + eps) * g + b.

  Statistics in float32 whatever the compute dtype; the output is cast back.
  """

  kind: str
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    x32 = x.astype(jnp.float32)
    if self.kind == "layer":
      x32 = x32 - x32.mean(axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    row = (1,) * (x.ndim - 1) + (dim,)  # the parameters' explicit rank (no implicit rank promotion)
    y = y * self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (dim,)).reshape(row)
    if self.kind == "layer":
      y = y + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (dim,)).reshape(row)
    return y.astype(self.dtype)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, meta: attention.TokenMeta, hooks: Hooks, return_probs: bool = False,
               packed: bool = True, shifted_group_size: int = 0):
    cfg = self.cfg
    h, k, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    proj = lambda name, heads, axes: Dense(
        (heads, dh), ("embed", axes, "head_dim"), use_bias=cfg.qkv_bias, dtype=cfg.dtype,
        init_std=cfg.init_std, cpu_matmul=cfg.cpu_matmul, name=name)(x_BxLxD)
    q = nn.with_logical_constraint(proj("q", h, "heads"), ("batch", "length", "heads", "head_dim"))
    kv_axes = ("batch", "length", "kv_heads", "head_dim")
    key = nn.with_logical_constraint(proj("k", k, "kv_heads"), kv_axes)
    value = nn.with_logical_constraint(proj("v", k, "kv_heads"), kv_axes)
    probs = None
    if return_probs:
      out, probs = attention.attend_with_probs(q, key, value, meta, hooks, soft_cap=cfg.logit_soft_cap)
    else:
      options = dict(implementation=cfg.attention, chunk_size=cfg.chunk_size, soft_cap=cfg.logit_soft_cap,
                     fused_kernel=cfg.fused_kernel, packed=packed)
      if shifted_group_size:
        out = attention.attend_shifted_groups(q, key, value, meta, hooks, group_size=shifted_group_size, **options)
      else:
        out = attention.attend(q, key, value, meta, hooks, **options)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
    o = Dense((cfg.d_model,), ("heads", "head_dim", "embed"), n_in=2, dtype=cfg.dtype,
              init_std=cfg.init_std, cpu_matmul=cfg.cpu_matmul, name="o")
    return o(out), probs


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    dense = lambda name, features, axes: Dense((features,), axes, dtype=cfg.dtype, init_std=cfg.init_std,
                                               cpu_matmul=cfg.cpu_matmul, name=name)
    up = dense("up", cfg.mlp_dim, ("embed", "mlp"))(x_BxLxD)
    if cfg.mlp == "swiglu":
      hidden = nn.silu(dense("gate", cfg.mlp_dim, ("embed", "mlp"))(x_BxLxD)) * up
    else:
      hidden = nn.gelu(up, approximate=False)
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    return dense("down", cfg.d_model, ("mlp", "embed"))(hidden)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, meta, hooks, return_probs: bool = False, packed: bool = True,
               shifted_group_size: int = 0):
    cfg = self.cfg
    norm = lambda name: Norm(cfg.norm, cfg.norm_eps, cfg.dtype, name=name)
    y, probs = Attention(cfg, name="attn")(norm("attn_norm")(x_BxLxD), meta, hooks, return_probs, packed,
                                           shifted_group_size)
    x_BxLxD = x_BxLxD + y
    x_BxLxD = x_BxLxD + MLP(cfg, name="mlp")(norm("mlp_norm")(x_BxLxD))
    return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed")), probs


class Transformer(nn.Module):
  """Decoder-only LM. ``apply({'params': p}, tokens, hooks=...)`` -> float32 logits [B, L, V].

  Keyword arguments of the call:
    hooks: the encoding's resolved hooks (``enc.hooks(head_dim=, n_heads=, d_model=, seq_len=)``),
      resolved for at least the longest position in ``positions``: rotary tables stop there.
    positions: int [B, L] token positions (restarting per packed segment); None: arange(L).
    segment_ids: int [B, L] packed-segment ids, 0 for padding; None: one segment.
    rng: a jax key enabling training-time randomized positions; None at evaluation.
    shifted_group_size: G > 0 trains with shifted sparse attention (LongLoRA's S2-Attn,
      ``attention.attend_shifted_groups``): groups of G tokens, half the heads shifted by
      G / 2. 0 (evaluation): full causal attention.
    return_attention: also return float32 attention probabilities [n_layers, B, H, L, L]
      (computed on the reference path whatever ``cfg.attention``; for analysis at small L).
    return_hidden: return the final-norm hidden states [B, L, D] instead of the logits;
      ``output_logits`` turns any slice of them into exactly those logits (a long window's
      loss can then be taken a block of tokens at a time, never forming [L, V]).
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxL, *, hooks: Hooks, positions=None, segment_ids=None, rng=None,
               return_attention: bool = False, shifted_group_size: int = 0, return_hidden: bool = False):
    cfg = self.cfg
    check_hooks(cfg, hooks)
    pe_apply.check_sequence_length(hooks, tokens_BxL.shape[1])
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), tokens_BxL.shape)
    meta, float_pos = token_meta(hooks, positions, segment_ids, segment_masking=cfg.segment_masking, rng=rng)

    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                     embedding_init=_init(cfg.init_std, ("vocab", "embed")), name="embed")
    x = embed(tokens_BxL)
    if cfg.embedding_multiplier != 1.0:
      x = x * jnp.asarray(cfg.embedding_multiplier, cfg.dtype)
    table = None
    if hooks.absolute == "learned":
      table = self.param("pos_embed", _init(cfg.init_std, (None, "embed")),
                         (hooks.learned_length, cfg.d_model), jnp.float32)
    absolute = pe_apply.absolute_embedding(hooks, float_pos, table)
    if absolute is not None:
      x = x + absolute.astype(cfg.dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    # Static: whether segment ids may mask (the fused kernels pick segment-aware kernels).
    packed = segment_ids is not None and cfg.segment_masking
    layer_hooks = lambda i: pe_apply.with_sliding_window(pe_apply.hooks_for_layer(hooks, i), cfg.sliding_window)
    if cfg.scan_layers and not self.is_initializing():
      # The same blocks as pure functions of each layer's parameters, scanned (layer_scan).
      block = Block(cfg, parent=None)
      x, all_probs = layer_scan.run_layers(
          lambda i, x, p, _: block.apply({"params": p}, x, meta, layer_hooks(i), return_attention, packed,
                                         shifted_group_size),
          x, stack_layers(cfg, self.variables["params"], hooks))
    else:
      all_probs = []
      for i in range(cfg.n_layers):
        x, probs = Block(cfg, name=f"layers_{i}")(x, meta, layer_hooks(i), return_attention, packed,
                                                  shifted_group_size)
        all_probs.append(probs)
      all_probs = jnp.stack(all_probs) if return_attention else None
    x = Norm(cfg.norm, cfg.norm_eps, cfg.dtype, name="final_norm")(x)
    if return_hidden and not self.is_initializing():
      return x

    # Compute-dtype inputs, float32 accumulation and output: logits and the loss stay float32.
    if cfg.tied_embeddings:
      logits = output_logits(cfg, {"embed": {"embedding": embed.embedding}}, x)
    else:
      logits = Dense((cfg.vocab_size,), ("embed", "vocab"), dtype=cfg.dtype, out_dtype=jnp.float32,
                     init_std=cfg.init_std, cpu_matmul=cfg.cpu_matmul, name="lm_head")(x)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    if return_attention:
      return logits, all_probs
    return logits


def stack_layers(cfg: ModelConfig, params, hooks: Hooks) -> layer_scan.Stacked:
  """The blocks' parameters (``params['layers_{i}']``) arranged for ``layer_scan.run_layers``:
  scanned one period of the per-layer hooks at a time when ``cfg.scan_layers``, else unrolled."""
  return layer_scan.stack([params[f"layers_{i}"] for i in range(cfg.n_layers)], period=pe_apply.layer_period(hooks),
                          scan=cfg.scan_layers)


def output_logits(cfg: ModelConfig, params, x_BxLxD) -> jnp.ndarray:
  """Float32 logits [B, L, V] of final-norm hidden states (``return_hidden``), computed as
  the model's output layer computes them: x . embed^T when tied, else x . lm_head/kernel,
  compute-dtype inputs, float32 accumulation, one 2-D GEMM over the tokens."""
  params = nn.meta.unbox(params)
  if cfg.tied_embeddings:
    w_DxV = params["embed"]["embedding"].T
  else:
    w_DxV = params["lm_head"]["kernel"]
  x_2d = x_BxLxD.astype(cfg.dtype).reshape(-1, cfg.d_model)
  if cpu_matmul.choose(cfg.cpu_matmul, cfg.dtype):
    logits = cpu_matmul.matmul(x_2d, w_DxV, jnp.float32)
  else:
    logits = jnp.dot(x_2d, w_DxV.astype(cfg.dtype), preferred_element_type=jnp.float32)
  return logits.reshape(x_BxLxD.shape[:-1] + (cfg.vocab_size,))


def _init_fn(cfg: ModelConfig):
  return lambda rng, tokens, hooks: Transformer(cfg).init(rng, tokens, hooks=hooks)


def init_params(cfg: ModelConfig, hooks: Hooks, rng: jax.Array, batch_shape: tuple[int, int] = (1, 1)):
  """float32 parameters (plain arrays, logical-axis boxes removed) for ``cfg`` and ``hooks``.

  Only learned APE makes the tree depend on the hooks (``pos_embed``); the batch shape
  only sizes the dummy forward pass that creates the parameters.
  """
  tokens = jnp.zeros(batch_shape, jnp.int32)
  return nn.unbox(jax.jit(_init_fn(cfg))(rng, tokens, hooks))["params"]


def param_logical_axes(cfg: ModelConfig, hooks: Hooks, batch_shape: tuple[int, int] = (1, 1)):
  """Tree of PartitionSpecs of logical axis names, shaped like ``init_params``; computes nothing."""
  tokens = jax.ShapeDtypeStruct(batch_shape, jnp.int32)
  abstract = jax.eval_shape(_init_fn(cfg), jax.random.key(0), tokens, hooks)
  return nn.get_partition_spec(abstract)["params"]
