"""The LongRoPE search objective: perplexity of a frozen model, every candidate in one call.

A candidate is a vector of per-pair rescale factors lambda_i (and n_hat). Applied zero-shot
as a LongRoPE long set it only changes arrays the model reads through its Hooks: the
rotary tables (theta_i / lambda_i, unscaled rows below n_hat) and the logit scale
(sqrt(1 + ln s / ln L_orig) squared). So a population is scored by one compiled function:
``jax.vmap`` over hooks that carry a leading candidate axis, with parameters and windows
broadcast. Everything before the first rotation (embedding, layer-0 norm and q/k/v
projections) does not depend on the hooks, so vmap leaves it unbatched: it is computed
once per call, not once per candidate.

The compiled shape is fixed for a whole search: candidates go through in chunks of
``candidates_per_call`` (the last chunk padded with copies of its last candidate), and the
unscaled "near" table always has ``near_size`` rows (each candidate's own n_hat is an
array). With several devices the candidate axis is split over the mesh's 'data' axis.

:func:`one_at_a_time_perplexities` scores the same candidates through the ordinary path
(a LongRoPE encoding -> its hooks -> ``window_nll``), one call per candidate: the
reference the batched scorer is checked and benchmarked against.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rope_lab import pe
from rope_lab.running import sharding
from rope_lab.data import Window
from rope_lab.evaluate.perplexity import eval_model_config, stack_windows, window_nll
from rope_lab.model.forward import encoding_hooks, token_losses
from rope_lab.model.skeleton import ModelConfig, Transformer
from rope_lab.pe.longrope import LongRoPE, longrope_attention_factor
from rope_lab.pe.rotary import default_inv_freq, rotary_tables

# Traces of the population program per model config (a side effect that runs only while tracing).
_TRACES: collections.Counter = collections.Counter()


def trace_count() -> int:
  """Total traces of the population scorer in this process (tests use it to catch recompiles)."""
  return sum(_TRACES.values())


# ----------------------------------------------------------------------------- what is rescaled


@dataclasses.dataclass(frozen=True)
class RotarySpace:
  """The rotary frequencies of a trained model that a candidate rescales."""

  head_dim: int
  rotary_dim: int
  base: float
  layout: str  # "half" or "interleaved", as the checkpoint was trained
  rotary_fraction: float = 1.0

  @property
  def pairs(self) -> int:
    return self.rotary_dim // 2

  def inv_freq(self) -> np.ndarray:
    """theta_i in float64, fastest pair first."""
    return default_inv_freq(self.rotary_dim, self.base)


def rotary_space(encoding: pe.Encoding, head_dim: int) -> RotarySpace:
  """The space of a run trained with plain RoPE; other encodings have no factors to search."""
  if encoding.name != "rope":
    raise ValueError(f"a LongRoPE search rescales the frequencies of a model trained with plain RoPE; "
                     f"this run was trained with {encoding.name!r}")
  return RotarySpace(head_dim=head_dim, rotary_dim=encoding.rotary_dim(head_dim), base=encoding.base,
                     layout=encoding.layout_name(), rotary_fraction=encoding.rotary_fraction)


def longrope_encoding(space: RotarySpace, long_factor, *, original_length: int, target_factor: float,
                      n_hat: int = 0, short_factor=None) -> LongRoPE:
  """The LongRoPE config a candidate stands for (short set: given or all ones)."""
  short = np.ones(space.pairs) if short_factor is None else short_factor
  return LongRoPE(base=space.base, rotary_fraction=space.rotary_fraction, layout=space.layout,
                  short_factor=tuple(short), long_factor=tuple(long_factor),
                  original_max_position_embeddings=original_length, factor=float(target_factor),
                  n_hat=int(n_hat), head_dim=space.head_dim)


def attention_factor_for(target_factor: float, original_length: int) -> float:
  """sqrt(1 + ln s / ln L_orig) on q and k, as LongRoPE computes it with factor = s."""
  return longrope_attention_factor(float(target_factor), int(original_length))


# ----------------------------------------------------------------------------- population hooks


def population_hooks(space: RotarySpace, factors_NxP: np.ndarray, n_hat_N: np.ndarray, *, length: int,
                     near_size: int, attention_factor: float) -> pe.Hooks:
  """Hooks whose rotary tables and logit scale carry a leading candidate axis N.

  Candidate n uses theta_i / lambda_ni at positions >= n_hat_n and the unscaled theta_i
  below (``near_size`` rows are stored, so every candidate shares one shape).
  """
  factors_NxP = np.asarray(factors_NxP, np.float64)
  inv_freq_NxP = space.inv_freq()[None, :] / factors_NxP
  tables = rotary_tables(inv_freq_NxP, max_position=length, rotary_dim=space.rotary_dim,
                         layout=space.layout, near_inv_freq=space.inv_freq() if near_size else None,
                         near_size=near_size, near_count=np.asarray(n_hat_N, np.int32))
  logit_scale_N = jnp.full((factors_NxP.shape[0],), attention_factor * attention_factor, jnp.float32)
  return pe.Hooks(positions=pe.base.identity_positions(), logit_scale=logit_scale_N, rotary=tables)


def candidate_axes(hooks: pe.Hooks) -> pe.Hooks:
  """vmap in_axes of population hooks: 0 on the rotary tables and logit scale, None elsewhere."""
  return hooks.replace(positions=None, logit_scale=0, rotary=jax.tree.map(lambda _: 0, hooks.rotary))


@functools.lru_cache(maxsize=16)
def _population_program(cfg: ModelConfig):
  """jit((params, inputs, targets, mask, hooks_N) -> summed NLL per candidate [N])."""
  model = Transformer(cfg)

  def population_nll(params, inputs_BxL, targets_BxL, mask_BxL, hooks):
    _TRACES[cfg] += 1

    def candidate_nll(candidate_hooks):
      logits = model.apply({"params": params}, inputs_BxL, hooks=candidate_hooks)
      return (token_losses(logits, targets_BxL) * mask_BxL).sum()

    return jax.vmap(candidate_nll, in_axes=(candidate_axes(hooks),))(hooks)

  return jax.jit(population_nll)


# ----------------------------------------------------------------------------- the scorer


@dataclasses.dataclass(frozen=True)
class ScoringSetup:
  """How a population is scored at one window length."""

  length: int  # window length in tokens
  attention_factor: float  # on q and k (logits get its square)
  near_size: int = 0  # unscaled rows stored: the largest n_hat any candidate may have
  candidates_per_call: int = 8  # compiled population size; rounded up to a multiple of the devices
  chunk_size: int = 256  # attention block length for windows >= 512 tokens
  windows_per_call: int | None = None  # None: every window in each call

  def __post_init__(self):
    for name in ("length", "candidates_per_call", "chunk_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ScoringSetup.{name} must be an int >= 1, got {value!r}")
    if not isinstance(self.near_size, int) or self.near_size < 0:
      raise ValueError(f"ScoringSetup.near_size must be an int >= 0, got {self.near_size!r}")
    if not self.attention_factor > 0:
      raise ValueError(f"ScoringSetup.attention_factor must be > 0, got {self.attention_factor!r}")
    if self.windows_per_call is not None and self.windows_per_call < 1:
      raise ValueError(f"ScoringSetup.windows_per_call must be None or >= 1, got {self.windows_per_call!r}")


@dataclasses.dataclass(frozen=True)
class WindowBatches:
  """The scored windows as equal-shape batches (the last padded with fully masked rows)."""

  inputs: tuple  # each [B, L] int32
  targets: tuple
  masks: tuple  # each [B, L] float32
  tokens: int  # scored tokens in all


def window_batches(windows: Sequence[Window], windows_per_call: int | None) -> WindowBatches:
  inputs, targets, mask = stack_windows(windows)
  per_call = windows_per_call or len(inputs)
  pad = -len(inputs) % per_call
  if pad:
    inputs, targets = (np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)]) for a in (inputs, targets))
    mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
  split = lambda a: tuple(a[i:i + per_call] for i in range(0, len(a), per_call))
  return WindowBatches(split(inputs), split(targets), split(mask), int(mask.sum()))


def default_candidates_per_call(devices: Sequence[jax.Device]) -> int:
  """1 on CPU, 32 per accelerator.

  Measured (benchmarks/README_longrope.md): XLA:CPU is already compute-bound on one
  candidate's windows, and every candidate added to a call multiplies the activations
  that memory-bound ops stream (a [N, B, L, mlp_dim] array per MLP), so larger chunks
  are slower per candidate. A GPU is far from busy with one candidate: 16-64 per call
  score about 14x faster than one per call.
  """
  return 1 if devices[0].platform == "cpu" else 32 * len(devices)


def _mesh_of(devices: Sequence[jax.Device]):
  return sharding.make_mesh((-1, 1, 1), devices) if len(devices) > 1 else None


@dataclasses.dataclass(frozen=True, eq=False)
class PopulationScorer:
  """``scorer(factors_NxP, n_hat_N) -> perplexity_N``: the score_population of run_search.

  Build it with :func:`make_population_scorer`; one scorer serves a whole search stage.
  """

  model: ModelConfig  # with the attention path for ``setup.length``
  params: Any  # placed on the devices (replicated over the mesh)
  space: RotarySpace
  setup: ScoringSetup
  batches: WindowBatches
  mesh: Any  # None on one device

  @property
  def candidates_per_call(self) -> int:
    devices = 1 if self.mesh is None else self.mesh.devices.size
    return -(-self.setup.candidates_per_call // devices) * devices

  def hooks_for(self, factors_NxP: np.ndarray, n_hat_N: np.ndarray) -> pe.Hooks:
    hooks = population_hooks(self.space, factors_NxP, n_hat_N, length=self.setup.length,
                             near_size=self.setup.near_size, attention_factor=self.setup.attention_factor)
    if self.mesh is None:
      return hooks
    on_data = NamedSharding(self.mesh, PartitionSpec("data"))
    put = lambda tree, where: jax.tree.map(lambda x: jax.device_put(x, where), tree)
    # Candidate-axis arrays are split over 'data'; the position map is replicated.
    return hooks.replace(positions=put(hooks.positions, sharding.replicated(self.mesh)),
                         logit_scale=put(hooks.logit_scale, on_data), rotary=put(hooks.rotary, on_data))

  def check(self, factors_NxP: np.ndarray, n_hat_N: np.ndarray) -> None:
    pairs = self.space.pairs
    if factors_NxP.ndim != 2 or factors_NxP.shape[1] != pairs:
      raise ValueError(f"factors must be [N, {pairs}] (one factor per rotary pair), got shape "
                       f"{factors_NxP.shape}")
    if n_hat_N.shape != (factors_NxP.shape[0],):
      raise ValueError(f"n_hat must have one entry per candidate, shape ({factors_NxP.shape[0]},), "
                       f"got {n_hat_N.shape}")
    if np.any(n_hat_N < 0) or np.any(n_hat_N > self.setup.near_size):
      raise ValueError(f"n_hat must be in [0, near_size={self.setup.near_size}], got {n_hat_N.tolist()}")
    if not np.all(np.isfinite(factors_NxP)) or np.any(factors_NxP <= 0):
      raise ValueError("factors must be finite and > 0")

  def summed_nll(self, factors_NxP, n_hat_N) -> np.ndarray:
    """float64 total NLL per candidate over every window."""
    factors_NxP = np.asarray(factors_NxP, np.float64)
    n_hat_N = np.asarray(n_hat_N, np.int64).reshape(-1)
    self.check(factors_NxP, n_hat_N)
    program = _population_program(self.model)
    per_call, count = self.candidates_per_call, len(factors_NxP)
    pending = []
    for start in range(0, count, per_call):
      factors, n_hat = factors_NxP[start:start + per_call], n_hat_N[start:start + per_call]
      pad = per_call - len(factors)  # a fixed shape: the compiled program is reused
      factors = np.concatenate([factors, np.repeat(factors[-1:], pad, axis=0)])
      n_hat = np.concatenate([n_hat, np.repeat(n_hat[-1:], pad)])
      hooks = self.hooks_for(factors, n_hat)
      pending.append([program(self.params, x, y, m, hooks)
                      for x, y, m in zip(self.batches.inputs, self.batches.targets, self.batches.masks)])
    sums = jax.device_get(pending)  # one host sync: every chunk is queued before the first returns
    totals = [np.sum(np.asarray(chunk, np.float64), axis=0) for chunk in sums]
    return np.concatenate(totals)[:count]

  def __call__(self, factors_NxP, n_hat_N) -> np.ndarray:
    loss_N = self.summed_nll(factors_NxP, n_hat_N) / max(self.batches.tokens, 1)
    return np.exp(np.minimum(loss_N, 700.0))


def make_population_scorer(model: ModelConfig, params, windows: Sequence[Window], space: RotarySpace,
                           setup: ScoringSetup, *, devices: Sequence[jax.Device] | None = None
                           ) -> PopulationScorer:
  """A scorer for ``windows`` (all of length ``setup.length``) on ``devices`` (default: all)."""
  lengths = {len(w.inputs) for w in windows}
  if lengths != {setup.length}:
    raise ValueError(f"every window must have setup.length={setup.length} tokens, got lengths {sorted(lengths)}")
  devices = list(jax.devices() if devices is None else devices)
  mesh = _mesh_of(devices)
  batches = window_batches(windows, setup.windows_per_call)
  target = devices[0] if mesh is None else sharding.replicated(mesh)
  params = jax.device_put(params, target)
  batches = WindowBatches(*(tuple(jax.device_put(a, target) for a in group)
                            for group in (batches.inputs, batches.targets, batches.masks)), batches.tokens)
  cfg = eval_model_config(model, setup.length, chunk_size=setup.chunk_size)
  return PopulationScorer(cfg, params, space, setup, batches, mesh)


# ----------------------------------------------------------------------------- reference path


def one_at_a_time_perplexities(model: ModelConfig, params, windows: Sequence[Window], space: RotarySpace,
                               factors_NxP, n_hat_N, *, original_length: int, target_factor: float,
                               chunk_size: int = 256) -> np.ndarray:
  """Perplexity of each candidate as a LongRoPE encoding through ``window_nll``, one call each.

  The windows must be longer than ``original_length`` so the long set (the candidate) applies.
  """
  length = len(windows[0].inputs)
  if length <= original_length:
    raise ValueError(f"windows of {length} tokens use LongRoPE's short set; the candidates are long "
                     f"factors, which apply above original_length={original_length}")
  cfg = eval_model_config(model, length, chunk_size=chunk_size)
  out = []
  for factors, n_hat in zip(np.asarray(factors_NxP, np.float64), np.asarray(n_hat_N).reshape(-1)):
    encoding = longrope_encoding(space, factors, original_length=original_length,
                                 target_factor=target_factor, n_hat=int(n_hat))
    nll = window_nll(cfg, params, windows, encoding_hooks(model, encoding, length))
    out.append(math.exp(min(nll.loss, 700.0)))
  return np.asarray(out)
