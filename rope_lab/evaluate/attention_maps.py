"""What a trained model attends to: attention maps, attention mass by distance, mean q/k.

* :func:`mean_attention_maps`: attention probabilities averaged over heads and documents,
  per layer, from the model's reference attention path (it materialises [L, L]; meant for
  windows up to a few thousand tokens).
* :func:`mass_by_distance`: for each layer, the attention mass at relative distance
  d = i - j averaged over query rows (it sums to 1 over d).
* :func:`mean_qk`: the mean query and key vectors (before rotation) of every layer and
  head, captured with flax's ``capture_intermediates`` on the q/k projections, so no model
  code changes. They are probes for the analytic similarity maps (Giraffe's study).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rope_lab import pe
from rope_lab.model.forward import encoding_hooks
from rope_lab.model.skeleton import ModelConfig, Transformer


@functools.lru_cache(maxsize=8)
def _attention_program(cfg: ModelConfig):
  model = Transformer(cfg)

  def maps(params, tokens, hooks):
    _, probs = model.apply({"params": params}, tokens, hooks=hooks, return_attention=True)
    return probs.mean(axis=(1, 2))  # [n_layers, B, H, L, L] -> [n_layers, L, L]

  return jax.jit(maps)


def mean_attention_maps(cfg: ModelConfig, params, encoding: pe.Encoding,
                        token_rows: np.ndarray) -> np.ndarray:
  """float32 [n_layers, L, L]: attention averaged over heads and the rows of ``token_rows`` [N, L].

  Rows go through one at a time so peak memory is one row's [n_layers, H, L, L].
  """
  token_rows = np.asarray(token_rows, np.int32)
  if token_rows.ndim != 2:
    raise ValueError(f"token_rows must be [N, L], got shape {token_rows.shape}")
  length = token_rows.shape[1]
  hooks = encoding_hooks(cfg, encoding, length)
  program = _attention_program(cfg)
  total = None
  for row in token_rows:
    maps = program(params, row[None], hooks)
    total = maps if total is None else total + maps
  return np.asarray(jax.device_get(total / len(token_rows)), np.float32)


def mass_by_distance(maps: np.ndarray) -> np.ndarray:
  """[n_layers, L, L] causal attention -> [n_layers, L]: mean over queries of p(i, i - d)."""
  maps = np.asarray(maps, np.float64)
  length = maps.shape[-1]
  i, j = np.tril_indices(length)
  distance = i - j
  out = np.stack([np.bincount(distance, weights=layer[i, j], minlength=length) for layer in maps])
  return out / length


def distance_bins(length: int) -> np.ndarray:
  """Edges 0, 1, 2, 4, 8, ..., >= length: log2-spaced bins of relative distance."""
  edges = [0, 1]
  while edges[-1] < length:
    edges.append(edges[-1] * 2)
  return np.asarray(edges)


def binned_mass(mass: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """[..., L] mass by distance -> [..., len(edges) - 1] mass per bin [edges[k], edges[k+1])."""
  cumulative = np.concatenate([np.zeros(mass.shape[:-1] + (1,)), np.cumsum(mass, axis=-1)], axis=-1)
  clipped = np.minimum(edges, mass.shape[-1])
  return cumulative[..., clipped[1:]] - cumulative[..., clipped[:-1]]


def pool_map(layer_map: np.ndarray, size: int) -> np.ndarray:
  """Averages an [L, L] map into [size, size] blocks (L a multiple of size, else cropped)."""
  length = layer_map.shape[-1]
  if length <= size:
    return layer_map
  block = length // size
  cropped = layer_map[..., :size * block, :size * block]
  return cropped.reshape(*cropped.shape[:-2], size, block, size, block).mean(axis=(-3, -1))


def last_block(maps: np.ndarray, size: int) -> np.ndarray:
  """[..., L, L] -> [..., n, n], n = min(size, L): the last n queries against the last n keys,
  unpooled (the end of the window, where positions are largest and every query has a long past)."""
  size = min(size, maps.shape[-1])
  return maps[..., -size:, -size:]


def is_qk_projection(module, method_name: str) -> bool:
  return method_name == "__call__" and module.name in ("q", "k")


@functools.lru_cache(maxsize=8)
def _qk_program(cfg: ModelConfig):
  # Unrolled layers: flax captures each layer's q/k under its name ('layers_{i}'), which a
  # scan over stacked weights (cfg.scan_layers) does not give.
  model = Transformer(dataclasses.replace(cfg, scan_layers=False))

  def capture(params, tokens, hooks):
    _, state = model.apply({"params": params}, tokens, hooks=hooks, capture_intermediates=is_qk_projection,
                           mutable=["intermediates"])
    layers = state["intermediates"]
    q = jnp.stack([layers[f"layers_{i}"]["attn"]["q"]["__call__"][0].mean(axis=(0, 1))
                   for i in range(cfg.n_layers)])
    k = jnp.stack([layers[f"layers_{i}"]["attn"]["k"]["__call__"][0].mean(axis=(0, 1))
                   for i in range(cfg.n_layers)])
    return q, k  # [n_layers, H, Dh], [n_layers, K, Dh]

  return jax.jit(capture)


def mean_qk(cfg: ModelConfig, params, encoding: pe.Encoding,
            token_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean un-rotated q [n_layers, H, Dh] and k [n_layers, K, Dh] over ``token_rows`` [N, L]."""
  token_rows = np.asarray(token_rows, np.int32)
  hooks = encoding_hooks(cfg, encoding, token_rows.shape[1])
  q, k = jax.device_get(_qk_program(cfg)(params, token_rows, hooks))
  return np.asarray(q, np.float32), np.asarray(k, np.float32)
