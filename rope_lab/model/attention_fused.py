"""The ``fused`` attention implementation: the platform's fused kernel, chosen per call.

Same contract as :mod:`rope_lab.model.attention`. q and k arrive rotated (rotary, xPos and
LongRoPE tables, at the mapped positions), so every RoPE-family method runs fused; the
temperature (``hooks.logit_scale``, a traced array) multiplies q, because the kernels
take their softmax scale as a compile-time number. The kernels:

* ``cudnn`` (GPU): ``jax.nn.dot_product_attention(implementation='cudnn')``, causal mask
  from the kernel; ALiBi as its bias, and for packed rows with ALiBi the segment mask as
  its mask (both then [B, H, L, L] arrays: fused compute, quadratic memory).
* ``pallas_gpu`` (GPU): ``jax.experimental.pallas.ops.gpu.attention.mha``, the Triton
  flash kernel with segment ids: packed rows without a bias. It wants equal q and kv head
  counts, so grouped kv heads are repeated.
* ``splash`` (TPU): ``jax.experimental.pallas.ops.tpu.splash_attention``, causal mask and
  segment ids, the logit soft cap in the kernel; one kernel per batch row (``vmap``),
  kv heads repeated for grouped queries.
* ``cpu_flash`` (CPU): rope_lab's own C++ kernel (``rope_lab/kernels``), causal over whole
  rows, grouped kv heads read in place, float32 inside; built with the machine's C++ compiler
  on first use. No segment ids, bias or soft cap; forward only, its gradient is a plain-JAX
  blockwise recomputation (``cpu_flash.blockwise_reference``).

Both Pallas kernels pad L to their block size: padded keys come after every real query,
so causality hides them, and padded query rows are dropped. Under a mesh they run inside
``shard_map`` over the batch axes and, when the heads divide it, the tensor axis.

What no kernel expresses falls back to ``chunked`` with a one-line notice: SelfExtend
(two rotations merged per pair), relative-position remap rules (ReRoPE, STRING, Dual Chunk
Attention, StreamingLLM: several rotations merged per pair), key windows (StreamingLLM's
sinks and recent window, Mistral's sliding window: a traced hook), absolute-table
encodings (their parallel context windows are a traced hook, so the window mask cannot be
ruled out when the program is built),
ALiBi on TPU (splash takes no bias), the soft cap on GPU, ALiBi in float32 on GPU (cuDNN
takes only 16-bit inputs), and on CPU packed rows, ALiBi, the soft cap, head dims the kernel
has no code for, or no C++ compiler to build it with. Forcing a kernel (``ModelConfig.fused_kernel``) that cannot express the
hooks is an error naming the reason; forcing a Pallas kernel on another platform runs it
in interpret mode (slow; meant for tests). Every choice is logged once and kept in
:data:`CHOICES`, so a benchmark can say which kernel ran.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from absl import logging

from rope_lab.errors import ConfigError
from rope_lab.model.kernels import cpu_flash
from rope_lab.pe import apply as pe_apply
from rope_lab.pe.base import Hooks

KERNELS = ("cudnn", "pallas_gpu", "splash", "cpu_flash")
CHOICES_ALLOWED = ("auto",) + KERNELS
FALLBACK = "chunked"
_PLATFORM_OF = {"cudnn": "gpu", "pallas_gpu": "gpu", "splash": "tpu", "cpu_flash": "cpu"}
_SPLASH_BLOCK = 128  # splash's blocks must be multiples of 128 tokens


class Features(NamedTuple):
  """The static facts of one attention call that decide which kernel can run it."""

  packed: bool  # rows carry several segments (segment ids must mask)
  alibi: bool
  self_extend: bool
  windows_possible: bool  # absolute-table encodings may carry parallel context windows
  soft_cap: bool
  half_precision: bool = True  # q/k/v in bfloat16 or float16 (cuDNN takes nothing else)
  remap: bool = False  # relative-position remap rules (ReRoPE, STRING, Dual Chunk Attention)
  key_window: bool = False  # a local key window (StreamingLLM sinks, Mistral sliding window)
  head_dim: int = 64
  n_heads: int = 1
  n_kv_heads: int = 1


@dataclasses.dataclass(frozen=True)
class KernelChoice:
  kernel: str  # one of KERNELS, or FALLBACK
  reason: str  # why: the rule that picked it, or what the kernels could not express
  interpret: bool = False  # a Pallas kernel run by the interpreter (not on its platform)


CHOICES: list[KernelChoice] = []  # appended each time a call is traced


def features_of(hooks: Hooks, *, packed: bool, soft_cap: float | None, dtype=jnp.bfloat16,
                q_shape=(1, 1, 1, 64), kv_heads: int = 1) -> Features:
  """``q_shape`` [B, L, H, Dh] and ``kv_heads``: what the CPU kernel needs to know."""
  return Features(packed=packed, alibi=hooks.alibi_slopes is not None,
                  self_extend=hooks.self_extend is not None, remap=hooks.remap is not None,
                  key_window=hooks.key_window is not None,
                  windows_possible=hooks.absolute != "none", soft_cap=soft_cap is not None,
                  half_precision=jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)),
                  head_dim=q_shape[-1], n_heads=q_shape[2], n_kv_heads=kv_heads)


def _unsupported(kernel: str, f: Features) -> str | None:
  """Why ``kernel`` cannot compute a call with features ``f`` (None: it can)."""
  if f.self_extend:
    return "SelfExtend merges two rotations per pair"
  if f.remap:
    return ("relative-position remapping (ReRoPE, STRING, Dual Chunk Attention, StreamingLLM) merges several "
            "rotations per pair")
  if f.key_window:
    return "a key window (StreamingLLM's sinks and recent window, a sliding window) is a traced hook"
  if f.windows_possible:
    return "absolute-table encodings may mask parallel context windows (a traced hook)"
  if kernel == "cudnn" and f.soft_cap:
    return "cuDNN attention has no logit soft cap"
  if kernel == "cudnn" and not f.half_precision:
    return "cuDNN attention takes bfloat16 or float16 only"
  if kernel == "pallas_gpu" and (f.alibi or f.soft_cap):
    return "the Pallas GPU kernel takes no bias and no soft cap"
  if kernel == "splash" and f.alibi:
    return "splash attention takes no bias (ALiBi)"
  if kernel == "cpu_flash":
    if f.packed:
      return "the CPU kernel takes no segment ids (packed rows)"
    if f.alibi or f.soft_cap:
      return "the CPU kernel takes no bias (ALiBi) and no soft cap"
    return cpu_flash.unsupported(head_dim=f.head_dim, n_heads=f.n_heads, n_kv_heads=f.n_kv_heads)
  return None


def _missing_here(kernel: str, platform: str) -> str | None:
  """Why ``kernel`` cannot run on this machine at all (None: nothing stops it). Only the CPU
  kernel can be missing: it is built here, on first use."""
  if kernel != "cpu_flash":
    return None
  if platform != "cpu":
    return f"it runs on the CPU only; this platform is {platform!r}"
  ready, detail = cpu_flash.available()
  return None if ready else detail


def choose_kernel(requested: str, platform: str, f: Features) -> KernelChoice:
  """The kernel for one call; ``requested`` is 'auto' or a kernel name (forced)."""
  if requested != "auto":
    why_not = _unsupported(requested, f)
    if why_not is not None:
      raise ConfigError(f"ModelConfig.fused_kernel={requested!r} cannot run this call: {why_not}; "
                        f"use fused_kernel='auto' (falls back to '{FALLBACK}') or another attention")
    why_not = _missing_here(requested, platform)
    if why_not is not None:
      raise ConfigError(f"ModelConfig.fused_kernel={requested!r} cannot run: {why_not}")
    if _PLATFORM_OF[requested] == platform:
      return KernelChoice(requested, "forced")
    if requested == "cudnn":
      raise ConfigError(f"ModelConfig.fused_kernel='cudnn' needs a GPU; this platform is {platform!r}")
    return KernelChoice(requested, f"forced on {platform}: Pallas interpret mode", interpret=True)
  if platform == "gpu":
    # cuDNN unless packed rows need segment ids (and no bias forces the mask into cuDNN)
    # or float32 inputs rule cuDNN out.
    preferred = "pallas_gpu" if (f.packed or not f.half_precision) and not f.alibi else "cudnn"
  elif platform == "tpu":
    preferred = "splash"
  elif platform == "cpu":
    preferred = "cpu_flash"
  else:
    return KernelChoice(FALLBACK, f"no fused kernel on {platform}")
  why_not = _unsupported(preferred, f) or _missing_here(preferred, platform)
  if why_not is not None:
    return KernelChoice(FALLBACK, why_not)
  return KernelChoice(preferred, "packed rows: segment ids" if preferred == "pallas_gpu" else "auto")


def record(choice: KernelChoice) -> None:
  """Keeps the choice and logs it once per distinct choice."""
  if choice not in CHOICES:
    if choice.kernel == FALLBACK:
      logging.warning("attention 'fused' falls back to '%s': %s", FALLBACK, choice.reason)
    else:
      logging.info("attention 'fused' runs %s (%s)", choice.kernel, choice.reason)
  CHOICES.append(choice)


# ----------------------------------------------------------------------------- kernels


def _scaled_q(q_BxLxHxD, hooks: Hooks):
  """q * logit_scale / sqrt(Dh): the whole softmax scale, so the kernels get scale 1."""
  scale = hooks.logit_scale.astype(jnp.float32) / math.sqrt(q_BxLxHxD.shape[-1])
  return (q_BxLxHxD.astype(jnp.float32) * scale).astype(q_BxLxHxD.dtype)


def _repeat_kv(x_BxLxKxD, n_heads: int):
  """[B, L, K, Dh] -> [B, L, H, Dh], head h reading kv head h // (H / K)."""
  return jnp.repeat(x_BxLxKxD, n_heads // x_BxLxKxD.shape[2], axis=2)


def _pad_length(x, multiple: int, fill=0):
  pad = -x.shape[1] % multiple
  return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)


def cudnn(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segments_BxL, positions_BxL, hooks: Hooks, *,
          packed: bool, implementation: str = "cudnn"):
  """cuDNN flash attention; ``implementation='xla'`` runs the same call on any platform."""
  bias, mask = None, None
  if hooks.alibi_slopes is not None:
    bias = pe_apply.alibi_bias(hooks.alibi_slopes, positions_BxL, positions_BxL).astype(q_BxLxHxD.dtype)
  if packed:
    mask = (segments_BxL[:, :, None] == segments_BxL[:, None, :])[:, None]
  return jax.nn.dot_product_attention(_scaled_q(q_BxLxHxD, hooks), k_BxLxKxD, v_BxLxKxD, bias, mask,
                                      scale=1.0, is_causal=True, implementation=implementation)


def pallas_gpu(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segments_BxL, hooks: Hooks, *, interpret: bool,
               block: int = 128):
  """The Pallas (Triton) flash kernel with segment ids."""
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention

  length, n_heads = q_BxLxHxD.shape[1], q_BxLxHxD.shape[2]
  block = min(block, max(16, pl_next_pow2(length)))
  bs = gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=min(block, 32),
                                block_kv_dkv=min(block, 32), block_q_dq=min(block, 32),
                                block_kv_dq=min(block, 32))
  q = _pad_length(_scaled_q(q_BxLxHxD, hooks), block)
  k = _pad_length(_repeat_kv(k_BxLxKxD, n_heads), block)
  v = _pad_length(_repeat_kv(v_BxLxKxD, n_heads), block)
  seg = _pad_length(segments_BxL, block, fill=-1)
  out = gpu_attention.mha(q, k, v, seg, sm_scale=1.0, causal=True, block_sizes=bs, interpret=interpret)
  return out[:, :length]


def pl_next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def splash(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segments_BxL, hooks: Hooks, *, soft_cap: float | None,
           interpret: bool, block: int = 512):
  """TPU splash attention, causal with segment ids, one kernel call per batch row."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  b, length, n_heads, _ = q_BxLxHxD.shape
  padded = -(-length // _SPLASH_BLOCK) * _SPLASH_BLOCK
  block = math.gcd(padded, block)  # a multiple of 128 dividing the padded length
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                        block_kv_dq=block)
  mask = sm.MultiHeadMask([sm.CausalMask((padded, padded)) for _ in range(n_heads)])
  kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              attn_logits_soft_cap=soft_cap, interpret=interpret)
  to_heads_first = lambda x: _pad_length(x, _SPLASH_BLOCK).transpose(0, 2, 1, 3)  # [B, H, L, Dh]
  q = to_heads_first(_scaled_q(q_BxLxHxD, hooks))
  k = to_heads_first(_repeat_kv(k_BxLxKxD, n_heads))
  v = to_heads_first(_repeat_kv(v_BxLxKxD, n_heads))
  seg = _pad_length(segments_BxL, _SPLASH_BLOCK, fill=-1)
  out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(s, s)))(q, k, v, seg)
  return out.transpose(0, 2, 1, 3)[:, :length]


# ----------------------------------------------------------------------------- mesh


def _on_mesh(fn, q, k, v, segments, positions, hooks):
  """Runs a Pallas kernel per shard: batch over the batch axes, heads over tensor."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(q, k, v, segments, positions, hooks)
  from jax.sharding import PartitionSpec as P

  from rope_lab.running import sharding
  batch = tuple(a for a in sharding.BATCH_AXES if a in mesh.shape)
  tensor = mesh.shape.get("tensor", 1)
  heads = "tensor" if k.shape[2] % tensor == 0 else None
  qkv_spec = P(batch, None, heads, None)
  row_spec = P(batch, None)
  hook_specs = jax.tree.map(lambda _: P(), hooks)
  return jax.shard_map(fn, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, row_spec, row_spec, hook_specs),
                       out_specs=qkv_spec, check_vma=False)(q, k, v, segments, positions, hooks)


def attend(choice: KernelChoice, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segments_BxL, positions_BxL,
           hooks: Hooks, *, packed: bool, soft_cap: float | None):
  """out [B, L, H, Dh] by the fused kernel of ``choice`` (never the fallback)."""
  segments = segments_BxL if packed else jnp.zeros_like(segments_BxL)
  if choice.kernel == "cudnn":
    return cudnn(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segments, positions_BxL, hooks, packed=packed)
  if choice.kernel == "pallas_gpu":
    fn = lambda q, k, v, s, p, h: pallas_gpu(q, k, v, s, h, interpret=choice.interpret)
  elif choice.kernel == "splash":
    fn = lambda q, k, v, s, p, h: splash(q, k, v, s, h, soft_cap=soft_cap, interpret=choice.interpret)
  elif choice.kernel == "cpu_flash":
    fn = lambda q, k, v, s, p, h: cpu_flash.attention(_scaled_q(q, h), k, v, 1.0)
  else:
    raise ValueError(f"not a fused kernel: {choice.kernel!r}")
  return _on_mesh(fn, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, segments, positions_BxL, hooks)
