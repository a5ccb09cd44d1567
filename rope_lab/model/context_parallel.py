"""Attention over rows split along their length (the mesh's ``sequence`` axis).

The rest of the model is per token, so a split row needs only attention to cross
devices. With n devices on the sequence axis each holds a contiguous 1/n of every row.
Attention gathers keys and values (and the token metadata the masks read) from all of
them, so the masks, the ALiBi bias and the SelfExtend merge see global token indices,
positions, segments and windows and stay exact; the rotation already happened at the
global positions before the split, and the hooks were resolved at the global length.

Causal load balancing: a device holding the row's last 1/n would do ~2n-1 times the
work of the first. So the row is cut into 2n chunks and device s computes the queries
of chunks s and 2n-1-s (one from the front, one from the back: equal work). Their
outputs are gathered back into the contiguous layout the rest of the model expects.
Per layer that moves q, k, v and the output once around the sequence axis (all-gathers,
and reduce-scatters in the backward pass) and holds the whole row's q, k, v on each
device: memory linear in L, like ``chunked``, whose online softmax computes the blocks.
A ring (``ppermute`` of key/value blocks, overlapped with compute) would hold 1/n of
the keys instead; all-gathering is simpler and exact, and is what is implemented.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rope_lab.model import attention_paths as paths
from rope_lab.pe.base import Hooks

AXIS = "sequence"


def sequence_parallelism() -> int:
  """How many ways the active mesh splits rows along their length (1 without a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  return dict(mesh.shape).get(AXIS, 1)


def balanced_chunks(n_devices: int) -> list[tuple[int, int]]:
  """(front, back) chunk of each device when a row is cut into 2 n chunks."""
  return [(s, 2 * n_devices - 1 - s) for s in range(n_devices)]


def causal_work(chunks: tuple[int, ...], chunk_len: int) -> int:
  """Allowed (query, key) pairs of a causal row computed for the query ``chunks``."""
  return sum(sum(c * chunk_len + i + 1 for i in range(chunk_len)) for c in chunks)


def attend(rot: paths.Rotated, v_BxLxKxD, meta: paths.TokenMeta, hooks: Hooks, *,
           chunk_size: int, soft_cap: float | None) -> jnp.ndarray:
  """out [B, L, H, Dh] of rotated q/k and v whose L is split over the sequence axis."""
  mesh = jax.sharding.get_abstract_mesh()
  n = dict(mesh.shape)[AXIS]
  b, length, n_kv, n_group, head_dim = rot.q.shape
  if length % (2 * n):
    raise ValueError(f"context parallelism over sequence={n} needs row lengths divisible by "
                     f"{2 * n} (front and back chunk per device); got length {length}")
  chunk = length // (2 * n)
  shape = dict(mesh.shape)
  batch = tuple(a for a in ("data", "fsdp") if shape.get(a, 1) > 1)
  tensor = shape.get("tensor", 1)
  heads = "tensor" if tensor > 1 and n_kv % tensor == 0 else None
  row = P(batch or None, AXIS)
  grouped = P(batch or None, AXIS, heads, None, None)  # q [B, L, K, G, Dh]
  per_kv = P(batch or None, AXIS, heads, None)  # k, v [B, L, K, Dh]

  slopes = None
  if hooks.alibi_slopes is not None:  # [H] -> [K, G], so a device gets its heads' slopes
    slopes = hooks.alibi_slopes.reshape(n_kv, n_group)
  args = {"q": rot.q, "q_far": rot.q_far, "k": rot.k, "k_far": rot.k_far, "v": v_BxLxKxD,
          "meta": meta, "hooks": hooks.replace(alibi_slopes=None), "slopes": slopes}
  specs = {"q": grouped, "q_far": grouped, "k": per_kv, "k_far": per_kv, "v": per_kv,
           "meta": paths.TokenMeta(row, row, row, row),
           "hooks": jax.tree.map(lambda _: P(), hooks.replace(alibi_slopes=None)),
           "slopes": P(heads, None)}
  specs = {k: (None if args[k] is None else spec) for k, spec in specs.items()}

  def local(a):
    gather = lambda x: None if x is None else jax.lax.all_gather(x, AXIS, axis=1, tiled=True)
    s = jax.lax.axis_index(AXIS)
    starts = (s * chunk, (2 * n - 1 - s) * chunk)

    def mine(x):  # this device's front and back query chunks of a gathered [B, L, ...] array
      if x is None:
        return None
      take = lambda start: jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=1)
      return jnp.concatenate([take(starts[0]), take(starts[1])], axis=1)

    k_meta = paths.TokenMeta(*map(gather, a["meta"]))
    q_meta = paths.TokenMeta(*map(mine, k_meta))
    q_rot = paths.Rotated(mine(gather(a["q"])), None, mine(gather(a["q_far"])), None)
    k_rot = paths.Rotated(None, gather(a["k"]), None, gather(a["k_far"]))
    local_hooks = a["hooks"]
    if a["slopes"] is not None:
      local_hooks = local_hooks.replace(alibi_slopes=a["slopes"].reshape(-1))
    out = paths.chunked_cross(q_rot, q_meta, k_rot, gather(a["v"]), k_meta, local_hooks,
                                  chunk_size=chunk_size, soft_cap=soft_cap)  # [B, 2C, H', Dh]
    # Back to the contiguous layout: chunk t of the row was computed by device t (front)
    # or 2n-1-t (back); this device keeps chunks 2s and 2s+1.
    every = jax.lax.all_gather(out, AXIS, axis=0)  # [n, B, 2C, H', Dh]
    fronts, backs = every[:, :, :chunk], every[:, :, chunk:]
    in_order = jnp.concatenate([fronts, backs[::-1]], axis=0)  # chunk t at index t
    own = jax.lax.dynamic_slice_in_dim(in_order, 2 * s, 2, axis=0)  # [2, B, C, H', Dh]
    return jnp.concatenate([own[0], own[1]], axis=1).reshape(
        b // math.prod(shape[a] for a in batch), length // n, -1, n_group, head_dim)

  out = jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=grouped, check_vma=False)(args)
  return out.reshape(b, length, n_kv * n_group, head_dim)

