"""The device mesh, the logical-axis rule table, and how batches and parameters are placed.

One mesh with axes (data, fsdp, tensor, sequence). Parameters and activations carry logical axis
names (set in the model with ``nn.with_logical_partitioning`` /
``nn.with_logical_constraint``); a short rule table maps them to mesh axes. The batch is
split over data and fsdp together, so fsdp is data parallelism whose parameters and
optimizer state are also sharded. The sequence axis splits activations along the row
(context parallelism): the model's 'length' axis maps to it, and attention over a split
row runs in ``rope_lab.model.context_parallel``; the input batch itself stays whole along the
row, so data loading does not change. The same code runs on one CPU, simulated CPU devices,
a GPU and a multi-host TPU slice: only the mesh shape changes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# A mesh shape of three sizes means (data, fsdp, tensor) with no sequence split.
MESH_AXES = ("data", "fsdp", "tensor", "sequence")
BATCH_AXES = ("data", "fsdp")

# First matching rule wins, and a mesh axis is used at most once per array, so in an
# activation [batch, length, embed] 'embed' falls through to unsharded once 'batch' has
# taken fsdp, while the [vocab, embed] table shards embed over fsdp. Names without a
# rule ('head_dim', 'norm') stay unsharded; 'length' is split only by a sequence axis.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("length", "sequence"),
)


def resolve_mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
  """Fills one -1 entry so the product equals ``n_devices``; errors name the numbers.

  Three sizes are (data, fsdp, tensor), with sequence 1.
  """
  shape = tuple(int(n) for n in shape)
  if len(shape) == len(MESH_AXES) - 1:
    shape = shape + (1,)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh_shape {shape}: 3 sizes (data, fsdp, tensor) or 4 {MESH_AXES}")
  known = math.prod(n for n in shape if n != -1)
  if -1 in shape:
    if n_devices % known:
      raise ValueError(f"mesh_shape {shape}: {n_devices} devices are not divisible by {known}")
    shape = tuple(n_devices // known if n == -1 else n for n in shape)
  if math.prod(shape) != n_devices:
    raise ValueError(f"mesh_shape {shape} needs {math.prod(shape)} devices, "
                     f"but {n_devices} are in use")
  return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over ``devices`` (default: all devices of all processes) with MESH_AXES.

  jax.make_mesh orders the devices for the physical topology (ICI rings on TPU) and
  keeps each process's devices contiguous along the leading axes.
  """
  devices = list(jax.devices() if devices is None else devices)
  resolved = resolve_mesh_shape(shape, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(resolved, MESH_AXES, axis_types=auto, devices=devices)


def batch_parallelism(mesh: Mesh) -> int:
  """How many ways the batch is split (data x fsdp)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over data and fsdp; every other dimension (and the tensor axis) replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def logical_context(mesh: Mesh, rules) -> Iterator[None]:
  """Activates the mesh and the rule table, so the model's logical constraints apply."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Drops the mesh axes of a dimension they do not divide (e.g. 2 kv heads over tensor=4)."""
  dims = list(spec) + [None] * (len(shape) - len(spec))
  fitted = []
  for size, axes in zip(shape, dims):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    ways = math.prod(mesh.shape[a] for a in names)
    fitted.append(axes if size % ways == 0 else None)
  return PartitionSpec(*fitted)


def tree_shardings(boxed_abstract, mesh: Mesh, rules) -> object:
  """Abstract tree of (logically) boxed arrays -> matching tree of NamedShardings.

  Unannotated leaves are replicated.
  """
  logical_specs = nn.get_partition_spec(boxed_abstract)
  mesh_specs = nn.logical_to_mesh(logical_specs, tuple(rules))
  shapes = nn.meta.unbox(boxed_abstract)
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _fit(spec, leaf.shape, mesh)),
      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def process_row_block(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
  """(block index, block count) of the batch rows this process must supply.

  The rows a process feeds are those its devices hold under ``sharding``. With data
  parallelism across processes that is the p-th of n contiguous blocks; when a tensor
  axis spans processes, several processes feed the same block. The data iterator is
  asked for exactly that block.
  """
  index_map = sharding.addressable_devices_indices_map((global_rows,))
  blocks = sorted({(idx[0].start or 0, global_rows if idx[0].stop is None else idx[0].stop)
                   for idx in index_map.values()})
  lo, hi = blocks[0][0], blocks[-1][1]
  rows = hi - lo
  contiguous = all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
  if not contiguous or global_rows % rows or lo % rows:
    raise ValueError(f"this process's devices hold rows {blocks} of a batch of {global_rows}, "
                     f"which is not one aligned contiguous block; reorder the mesh devices")
  return lo // rows, global_rows // rows


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding,
                 global_rows: int) -> dict[str, jax.Array]:
  """This process's rows -> global arrays laid out over the mesh (no cross-host copies)."""
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    out[key] = jax.make_array_from_process_local_data(
        sharding, value, (global_rows,) + value.shape[1:])
  return out
