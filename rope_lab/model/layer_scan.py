"""Running a stack of layers either unrolled or as one ``lax.scan`` over their stacked weights.

A Python loop over n layers puts n copies of the block into the compiled program, so XLA's
compile time grows with depth. Scanned, one period of the layers (one layer, or one cycle
of a per-layer pattern such as Gemma 3's 'LLLLLG') is compiled once and looped over the
stacked weights, with identical arithmetic. The parameter tree keeps its ``layers_{i}``
layout (checkpoints, LoRA's per-module adapters and the sharding rules rely on it): the
stack is a copy of the layer weights, made inside the program by the model
(:func:`stack` under ``jit``) or once outside it by callers that run many short programs
on the same weights (generation's decode steps).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# layer_fn(layer: int, x, layer_params, layer_state) -> (x, layer_output). ``layer`` is
# static; in the scanned part it is the position within the period (layer % period), so
# the body may depend on ``layer % period`` only.
LayerFn = Callable[[int, Any, Any, Any], tuple[Any, Any]]


class Stacked(NamedTuple):
  """Layer parameters arranged for :func:`run_layers`.

  scanned: None, or one tree per position j in the period whose leaves hold layers
    j, j + period, ... stacked on a leading axis of ``reps`` (n_layers // period) entries.
  tail: the per-layer trees of the layers the scan does not cover (all of them when
    unscanned), in order.
  """

  scanned: list | None
  tail: list


def _stack_trees(trees: list) -> Any:
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def stack(layer_params: list, *, period: int = 1, scan: bool = True) -> Stacked:
  """``layer_params`` (one tree per layer, alike within each residue class of ``period``)
  arranged for ``run_layers``; ``scan=False`` (or fewer than two periods) unrolls them all."""
  reps = len(layer_params) // period if scan else 0
  if reps < 2:
    return Stacked(None, list(layer_params))
  scanned = [_stack_trees(layer_params[j:reps * period:period]) for j in range(period)]
  return Stacked(scanned, list(layer_params[reps * period:]))


def run_layers(layer_fn: LayerFn, x, layers: Stacked, layer_state=None):
  """Applies ``layer_fn`` for every layer in order; returns (x, outputs stacked over layers).

  layer_state: None or a tree of arrays with a leading layer axis [n_layers, ...] (a key /
    value cache): layer i receives the slice [i] and its output replaces it.
  Layer outputs (the updated state, attention probabilities, or None) come back stacked
  over the layers in order, None when every layer returns None.
  """
  period = 0 if layers.scanned is None else len(layers.scanned)
  reps = 0 if layers.scanned is None else jax.tree_util.tree_leaves(layers.scanned[0])[0].shape[0]
  n_scanned = reps * period
  outputs = []
  if layers.scanned is not None:
    # The state of repetition r: layers r*period .. r*period + period - 1, as [reps, period, ...].
    state_xs = None if layer_state is None else jax.tree_util.tree_map(
        lambda a: a[:n_scanned].reshape((reps, period) + a.shape[1:]), layer_state)

    def body(carry, xs):
      params_by_position, state = xs
      outs = []
      for j in range(period):
        state_j = None if state is None else jax.tree_util.tree_map(lambda a, j=j: a[j], state)
        carry, out = layer_fn(j, carry, params_by_position[j], state_j)
        outs.append(out)
      return carry, None if outs[0] is None else _stack_trees(outs)

    x, ys = jax.lax.scan(body, x, (layers.scanned, state_xs))
    if ys is not None:  # [reps, period, ...] -> [reps * period, ...] in layer order
      outputs.append(jax.tree_util.tree_map(lambda a: a.reshape((n_scanned,) + a.shape[2:]), ys))
  tail = []
  for i, p in enumerate(layers.tail, start=n_scanned):
    state_i = None if layer_state is None else jax.tree_util.tree_map(lambda a, i=i: a[i], layer_state)
    x, out = layer_fn(i, x, p, state_i)
    tail.append(out)
  if tail and tail[0] is not None:
    outputs.append(_stack_trees(tail))
  if not outputs:
    return x, None
  return x, outputs[0] if len(outputs) == 1 else jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *outputs)
