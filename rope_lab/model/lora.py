"""LoRA adapters (Hu et al. 2021) for LongLoRA fine-tunes (Chen et al. 2023), as transforms
of the parameter tree: the model skeleton knows nothing of them.

A target projection's kernel W (rope_lab.model.skeleton.Dense layout [in..., out...]) gains an
adapter ``a`` [in..., r] (uniform in +-1/sqrt(fan_in), as PEFT's Kaiming init of lora_A)
and ``b`` [r, out...] (zeros), so the layer computes

    y = x W + (alpha / r) (x a) b,   i.e. W_merged = W + (alpha / r) a b,

where PEFT's lora_A.weight [r, in] is a^T and lora_B.weight [out, r] is b^T. Training
runs the unmerged form (:func:`unmerged`, a Flax method interceptor on Dense), so the
frozen kernels get no gradient and no weight-sized update; checkpoints, evaluation and
export see the merged weights (:func:`merge`). Besides the adapters, LongLoRA trains the
embeddings and the norms (``TRAINABLE_EXTRAS``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

# Dense modules an adapter can target, with how many leading kernel axes are inputs.
TARGET_INPUT_AXES = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
TARGETS = tuple(TARGET_INPUT_AXES)
TRAINABLE_EXTRAS = ("embeddings", "norms")  # embed (and a learned pos_embed); every *norm scale/bias


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  rank: int
  alpha: float
  targets: tuple[str, ...]
  extras: tuple[str, ...]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def spec_of(cfg) -> LoraSpec | None:
  """The LoRA spec of a TrainConfig; None when ``lora_rank`` is 0 (full training)."""
  if not cfg.lora_rank:
    return None
  return LoraSpec(cfg.lora_rank, float(cfg.lora_alpha), tuple(cfg.lora_targets), tuple(cfg.lora_trainable))


def _flat(tree) -> dict[tuple, Any]:
  return traverse_util.flatten_dict(tree)


def _module_paths(params, targets) -> list[tuple]:
  return sorted(path[:-1] for path in _flat(params) if path[-1] == "kernel" and path[-2] in targets)


def init_adapters(rng: jax.Array, params, spec: LoraSpec) -> dict:
  """{module path...: {"a": [in..., r], "b": [r, out...]}} for every targeted kernel."""
  flat = _flat(params)
  adapters = {}
  for i, module in enumerate(_module_paths(params, spec.targets)):
    kernel = flat[module + ("kernel",)]
    n_in = TARGET_INPUT_AXES[module[-1]]
    fan_in, fan_out = tuple(kernel.shape[:n_in]), tuple(kernel.shape[n_in:])
    bound = 1.0 / math.sqrt(math.prod(fan_in))
    adapters[module + ("a",)] = jax.random.uniform(jax.random.fold_in(rng, i), fan_in + (spec.rank,),
                                                   jnp.float32, -bound, bound)
    adapters[module + ("b",)] = jnp.zeros((spec.rank,) + fan_out, jnp.float32)
  return traverse_util.unflatten_dict(adapters)


def _is_extra(path: tuple, extras: tuple[str, ...]) -> bool:
  names = [str(p) for p in path]
  return (("embeddings" in extras and names[0] in ("embed", "pos_embed"))
          or ("norms" in extras and any(name.endswith("norm") for name in names[:-1])))


def extra_params(params, spec: LoraSpec) -> dict:
  """The sub-tree of ``params`` trained besides the adapters (embeddings, norms)."""
  return traverse_util.unflatten_dict({p: x for p, x in _flat(params).items() if _is_extra(p, spec.extras)})


def replace_leaves(params, subtree) -> dict:
  """``params`` with the leaves of ``subtree`` (same paths) put in their place."""
  flat = dict(_flat(params))
  unknown = sorted(set(_flat(subtree)) - set(flat))
  if unknown:
    raise ValueError(f"paths not in the parameters: {unknown[:5]}")
  flat.update(_flat(subtree))
  return traverse_util.unflatten_dict(flat)


def _by_module(adapters) -> dict[tuple, dict[str, Any]]:
  """{module path: {"a": ..., "b": ...}}."""
  modules: dict[tuple, dict[str, Any]] = {}
  for path, leaf in _flat(adapters).items():
    modules.setdefault(tuple(path[:-1]), {})[path[-1]] = leaf
  return modules


def frozen_kernels(params, adapters) -> dict:
  """The base kernels the adapters sit on (what a resumed run must add them to again)."""
  flat = _flat(params)
  return traverse_util.unflatten_dict({m + ("kernel",): flat[m + ("kernel",)] for m in _by_module(adapters)})


def delta(a, b, scale: float) -> jax.Array:
  """(alpha / r) a b in the kernel's layout [in..., out...]."""
  return scale * jnp.tensordot(a, b, axes=1)


def merge(params, adapters, scale: float) -> dict:
  """``params`` with every adapted kernel replaced by W + (alpha / r) a b."""
  flat = dict(_flat(params))
  for module, adapter in _by_module(adapters).items():
    flat[module + ("kernel",)] = flat[module + ("kernel",)] + delta(adapter["a"], adapter["b"], scale)
  return traverse_util.unflatten_dict(flat)


@contextlib.contextmanager
def unmerged(adapters, scale: float):
  """Within this context every adapted Dense adds (alpha / r) (x a) b to its output."""
  from rope_lab.model.skeleton import Dense  # the model imports nothing from here

  by_module = _by_module(adapters)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    adapter = by_module.get(tuple(module.path)) if isinstance(module, Dense) else None
    if adapter is None or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    x = args[0]
    a, b = adapter["a"], adapter["b"]
    rank = a.shape[-1]
    lead = x.shape[: x.ndim - module.n_in]
    x_2d = x.astype(module.dtype).reshape(math.prod(lead), -1)
    low = jnp.dot(x_2d, a.astype(module.dtype).reshape(-1, rank))
    update = jnp.dot(low, b.astype(module.dtype).reshape(rank, -1)) * scale
    return y + update.reshape(y.shape).astype(y.dtype)

  with nn.intercept_methods(interceptor):
    yield
