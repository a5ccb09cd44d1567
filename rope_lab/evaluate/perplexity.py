"""Sliding-window perplexity of a checkpoint under any encoding, at any window length.

The scorer is one jitted function per model shape, ``(params, inputs, targets, mask,
hooks) -> (summed token NLL, scored tokens)``. The encoding enters only through the Hooks
pytree, a traced argument, so scoring one checkpoint under many encodings at one window
length compiles once as long as the encodings share the hooks' structure (PI, NTK, YaRN,
Dynamic NTK/YaRN, Llama 3, power and truncated bases all do): only arrays change.
:func:`window_nll` is also the scorer a LongRoPE search uses for a population: same
params and windows, one Hooks value per candidate.

Long windows use memory-linear attention: the [L, L] logits of a 32K-token window would not
fit in memory otherwise. On CPU that is the ``fused`` path, whose C++ flash kernel
(``rope_lab/kernels``) keeps each block in cache: its attention is about twice as fast as the
chunked path's (benchmarks/attention_cpu.py); what the kernel cannot express (packed rows, ALiBi,
SelfExtend, remap rules, key windows) falls back to ``chunked``, and so does every other
platform (its fused kernels take 16-bit inputs or are checked here only in interpret mode),
with blocks of ``eval_chunk_size``. For the same reason the loss is
taken from the final hidden states ``LOSS_BLOCK_TOKENS`` at a time
(``forward.blockwise_token_losses``): the [L, V] logits are never formed.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rope_lab import pe
from rope_lab.data import LongDocument, Window, bits_per_byte, sliding_windows
from rope_lab.model.forward import blockwise_token_losses, encoding_hooks
from rope_lab.model.skeleton import ModelConfig, Transformer

# Windows at least this long use the memory-linear attention (shorter ones XLA's dot product).
CHUNKED_FROM = 512
DEFAULT_CHUNK = None  # eval_chunk_size: from the model's head count and the window length
# Blocks of the chunked attention: the largest power of two in this range whose float32
# logits for all heads ([H, C, C]) fit in EVAL_BLOCK_LOGITS values (16 MiB), and that cuts the
# window into at least EVAL_MIN_BLOCKS blocks.
EVAL_CHUNK_RANGE = (256, 1024)
EVAL_MIN_BLOCKS = 8
EVAL_BLOCK_LOGITS = 4 * 1024 * 1024
DEFAULT_BATCH_TOKENS = 16384
# The loss is taken this many tokens (rows x positions) at a time from the hidden states:
# a 49K vocabulary's logits are then 200 MB, not 6 GiB at 32K tokens.
LOSS_BLOCK_TOKENS = 1024

# How often each scorer has been traced (a Python side effect runs only while tracing).
_TRACES: collections.Counter = collections.Counter()


def trace_count() -> int:
  """Total traces of the NLL scorers in this process (tests use it to catch recompiles)."""
  return sum(_TRACES.values())


def eval_chunk_size(cfg: ModelConfig, length: int) -> int:
  """The chunked attention's block length for evaluating ``cfg`` on windows of ``length``
  tokens: the largest power of two in EVAL_CHUNK_RANGE whose [H, C, C] float32 logits fit in
  EVAL_BLOCK_LOGITS values and that gives at least EVAL_MIN_BLOCKS blocks.

  Measured on 2 CPU cores (benchmarks/README.md, long-context evaluation): larger blocks pay
  the loop's per-block cost less often, until they spill out of the caches (the tiny model's
  4 heads ran fastest at 1024 tokens a block at 32K, SmolLM2-135M's 9 heads at 512 at 8K);
  and the diagonal blocks are computed whole, so a window of few blocks wastes up to half
  its work on future keys (a 1024-token window: 9 ms in blocks of 256, 19 ms in one block).
  """
  low, high = EVAL_CHUNK_RANGE
  chunk = high
  while chunk > low and (cfg.n_heads * chunk * chunk > EVAL_BLOCK_LOGITS or chunk * EVAL_MIN_BLOCKS > length):
    chunk //= 2
  return chunk


def eval_model_config(cfg: ModelConfig, length: int, *, chunk_size: int | None = DEFAULT_CHUNK,
                      chunked_from: int = CHUNKED_FROM) -> ModelConfig:
  """``cfg`` with the attention path for windows of ``length`` tokens (parameters unchanged);
  ``chunk_size`` None: ``eval_chunk_size``."""
  if length >= chunked_from:
    chunk_size = chunk_size or eval_chunk_size(cfg, length)
    attention = "fused" if jax.default_backend() == "cpu" else "chunked"
    return dataclasses.replace(cfg, attention=attention, fused_kernel="auto", chunk_size=min(chunk_size, length))
  attention = "dot_product" if cfg.logit_soft_cap is None else "reference"
  return dataclasses.replace(cfg, attention=attention)


@functools.lru_cache(maxsize=32)
def _nll_program(cfg: ModelConfig):
  model = Transformer(cfg)

  def nll(params, inputs, targets, mask, hooks):
    _TRACES[cfg] += 1
    hidden = model.apply({"params": params}, inputs, hooks=hooks, return_hidden=True)
    block = max(1, LOSS_BLOCK_TOKENS // inputs.shape[0])
    losses = blockwise_token_losses(cfg, params, hidden, targets, block_tokens=block) * mask
    # Per-window sums (not one batch total): the study's intervals resample windows.
    return losses.sum(axis=1), mask.sum(axis=1)

  return jax.jit(nll)


@dataclasses.dataclass(frozen=True)
class NLL:
  """Summed next-token loss (nats) over the scored tokens, in total and per window."""

  total: float
  tokens: int
  window_totals: tuple[float, ...] = ()  # NLL (nats) of each window's scored tokens, in window order
  window_tokens: tuple[int, ...] = ()

  @property
  def loss(self) -> float:
    return self.total / max(self.tokens, 1)


def stack_windows(windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Windows -> (inputs, targets, loss_mask), each [N, L]."""
  if not windows:
    raise ValueError("no windows to score")
  lengths = {len(w.inputs) for w in windows}
  if len(lengths) != 1:
    raise ValueError(f"windows of one call must share a length, got {sorted(lengths)}")
  return tuple(np.stack([getattr(w, f) for w in windows]) for f in ("inputs", "targets", "loss_mask"))


def window_nll(cfg: ModelConfig, params, windows: Sequence[Window], hooks: pe.Hooks, *,
               batch_size: int | None = None) -> NLL:
  """Total NLL and token count of ``windows`` under ``hooks`` (already resolved for their length).

  Windows go through in batches of ``batch_size`` (default: about 16K tokens a batch); the
  last batch is filled with fully masked rows so every batch has one shape.
  """
  inputs, targets, mask = stack_windows(windows)
  n, length = inputs.shape
  batch_size = batch_size or max(1, min(n, DEFAULT_BATCH_TOKENS // length))
  pad = -n % batch_size
  if pad:
    zeros = np.zeros((pad, length), inputs.dtype)
    inputs, targets = np.concatenate([inputs, zeros]), np.concatenate([targets, zeros])
    mask = np.concatenate([mask, np.zeros((pad, length), mask.dtype)])
  program = _nll_program(cfg)
  sums = [program(params, inputs[i:i + batch_size], targets[i:i + batch_size],
                  mask[i:i + batch_size], hooks) for i in range(0, len(inputs), batch_size)]
  sums = jax.device_get(sums)  # one host sync for all batches
  per_window = np.concatenate([np.asarray(s, np.float64) for s, _ in sums])[:n]
  counts = np.concatenate([np.asarray(c, np.float64) for _, c in sums])[:n]
  total = math.fsum(per_window)  # per-window float32 sums, added in float64
  return NLL(total=total, tokens=int(round(math.fsum(counts))),
             window_totals=tuple(float(x) for x in per_window),
             window_tokens=tuple(int(round(c)) for c in counts))


@dataclasses.dataclass(frozen=True)
class LengthResult:
  """Perplexity of the documents at one window length."""

  length: int
  stride: int
  loss: float  # mean NLL per scored token (nats)
  perplexity: float
  bits_per_byte: float
  tokens: int
  bytes: int
  windows: int
  seconds: float
  per_window: dict | None = None  # see window_record: what the study's paired intervals resample

  def metrics(self) -> dict:
    return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens, "bytes": self.bytes, "windows": self.windows,
            "seconds": round(self.seconds, 3)}


def document_windows(documents: Sequence[LongDocument], length: int, stride: int,
                     pad_id: int) -> list[Window]:
  """Every document cut into sliding windows (each scores only its new tokens)."""
  windows = []
  for doc in documents:
    windows.extend(sliding_windows(doc.tokens, length, stride, pad_id))
  return windows


def window_record(documents: Sequence[LongDocument], windows: Sequence[Window], nll: NLL, stride: int,
                  tokenizer) -> dict:
  """Per window, compactly: its document (index in ``documents``), the position of its first
  scored target in that document, its NLL (nats, 4 decimals) and its scored bytes.

  The positions let windows of two lengths over the same tokens be matched up (each token is
  scored once at every length), which is what a paired interval across lengths needs.
  """
  docs, starts, nbytes = [], [], []
  k = 0
  for index, doc in enumerate(documents):
    count = len(sliding_windows(doc.tokens, len(windows[0].inputs), stride, tokenizer.pad_id))
    for j in range(count):
      window = windows[k + j]
      docs.append(index)
      starts.append(j * stride + int(np.argmax(window.loss_mask > 0)))
      nbytes.append(int(tokenizer.count_bytes(window.targets[window.loss_mask > 0])))
    k += count
  return {"doc": docs, "start": starts, "nll": [round(x, 4) for x in nll.window_totals], "bytes": nbytes}


def stride_for(length: int, stride_fraction: float) -> int:
  """Stride of ``stride_fraction`` of the window, at least one token."""
  if not 0 < stride_fraction <= 1:
    raise ValueError(f"stride_fraction must be in (0, 1], got {stride_fraction}")
  return max(1, int(round(length * stride_fraction)))


def perplexity_at_length(cfg: ModelConfig, params, encoding: pe.Encoding,
                         documents: Sequence[LongDocument], length: int, *, stride: int,
                         tokenizer, chunk_size: int | None = DEFAULT_CHUNK,
                         batch_size: int | None = None) -> LengthResult:
  """Sliding-window perplexity of ``documents`` with windows of ``length`` tokens.

  Length-dependent encodings (Dynamic NTK/YaRN, LongRoPE) are resolved at the window
  length, as they would be for a forward pass of that many tokens.
  """
  start = time.perf_counter()
  windows = document_windows(documents, length, stride, tokenizer.pad_id)
  hooks = encoding_hooks(cfg, encoding, length)
  nll = window_nll(eval_model_config(cfg, length, chunk_size=chunk_size), params, windows, hooks,
                   batch_size=batch_size)
  per_window = window_record(documents, windows, nll, stride, tokenizer)
  num_bytes = sum(per_window["bytes"])
  return LengthResult(
      length=length, stride=stride, loss=nll.loss, perplexity=math.exp(min(nll.loss, 700.0)),
      bits_per_byte=bits_per_byte(nll.total, num_bytes), tokens=nll.tokens, bytes=num_bytes,
      windows=len(windows), seconds=time.perf_counter() - start, per_window=per_window)


def perplexity_vs_length(cfg: ModelConfig, params, encoding_at, documents: Sequence[LongDocument],
                         lengths: Sequence[int], *, stride_fraction: float, tokenizer,
                         chunk_size: int | None = DEFAULT_CHUNK) -> list[LengthResult]:
  """``perplexity_at_length`` for each length; ``encoding_at(length)`` gives the encoding to use."""
  return [perplexity_at_length(cfg, params, encoding_at(length), documents, length,
                               stride=stride_for(length, stride_fraction), tokenizer=tokenizer,
                               chunk_size=chunk_size)
          for length in lengths]


def logits_fn(cfg: ModelConfig, params, encoding: pe.Encoding):
  """tokens [B, L] -> float32 logits [B, L, V], hooks resolved at L (for the data module's scorers)."""
  @functools.lru_cache(maxsize=8)
  def forward(length):
    model = Transformer(eval_model_config(cfg, length))
    return jax.jit(lambda p, t, h: model.apply({"params": p}, t, hooks=h))

  def apply(tokens):
    tokens = jnp.asarray(tokens, jnp.int32)
    length = tokens.shape[1]
    return forward(length)(params, tokens, encoding_hooks(cfg, encoding, length))
  return apply
