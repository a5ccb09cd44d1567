"""Loss and gradients of a tiny model on a (data 2, sequence 4) mesh and on one device.

Started by tests/test_context_parallel.py in its own process, because the device count
must be fixed (XLA_FLAGS) before JAX starts. For each encoding it prints one JSON line:
the largest absolute differences of the loss and of every gradient leaf, and the loss;
then one line with the error a row length the chunks do not divide raises, and one
with the fused Pallas kernels' differences from the reference when run per shard.
The rows are packed (two documents in one row, positions restarting), so the segment
mask and the positions cross the sequence split.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rope_lab import pe

from rope_lab.model import attention

from rope_lab.model import context_parallel

from rope_lab.running import sharding
from rope_lab.model.skeleton import ModelConfig, Transformer, init_params, token_meta

B, L = 2, 32  # 8 chunks of 4 tokens: a front and a back chunk on each sequence device
ENCODINGS = {
    "rope": {},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 8},
    "xpos": {"scale_base": 16.0},
    "alibi": {},
}


def batch():
  rs = np.random.RandomState(0)
  tokens = rs.randint(0, 64, (B, L + 1))
  split = 13  # row 0 holds documents of 13 and 19 tokens, row 1 one document
  segments = np.stack([[1] * split + [2] * (L - split), [1] * L])
  positions = np.stack([np.r_[np.arange(split), np.arange(L - split)], np.arange(L)])
  return (jnp.asarray(tokens[:, :-1], jnp.int32), jnp.asarray(tokens[:, 1:], jnp.int32),
          jnp.asarray(positions, jnp.int32), jnp.asarray(segments, jnp.int32))


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, mlp_dim=64,
                    attention="chunked", chunk_size=8)
  model = Transformer(cfg)
  inputs, targets, positions, segments = batch()
  mesh = sharding.make_mesh((2, 1, 1, 4))

  def loss_fn(params, hooks):
    logits = model.apply({"params": params}, inputs, hooks=hooks, positions=positions, segment_ids=segments)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  step = jax.jit(jax.value_and_grad(loss_fn))
  hooks_of = {name: pe.make(name, **params).hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads,
                                                  d_model=cfg.d_model, seq_len=L)
              for name, params in ENCODINGS.items()}
  # No encoding here has parameters (only learned APE does), so every encoding starts from
  # the same weights; one jitted init instead of an eager one per encoding.
  weights = init_params(cfg, hooks_of["rope"], jax.random.key(1), batch_shape=inputs.shape)
  for name, hooks in hooks_of.items():
    one_loss, one_grads = step(weights, hooks)
    with sharding.logical_context(mesh, sharding.DEFAULT_RULES):
      assert context_parallel.sequence_parallelism() == 4
      cp_loss, cp_grads = step(weights, hooks)
    # Compared in numpy: per-leaf jnp reductions would each compile a program.
    one_grads, cp_grads = (jax.tree.leaves(jax.device_get(g)) for g in (one_grads, cp_grads))
    diffs = [float(np.abs(a - b).max()) for a, b in zip(one_grads, cp_grads)]
    scale = max(float(np.abs(g).max()) for g in one_grads)
    out = {"encoding": name, "loss": float(one_loss), "loss_diff": abs(float(one_loss) - float(cp_loss)),
           "grad_diff": max(diffs), "grad_scale": scale}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
  # A row of 30 tokens cannot be cut into a front and a back chunk for each of 4 devices.
  try:
    with sharding.logical_context(mesh, sharding.DEFAULT_RULES):
      jax.jit(model.apply).lower({"params": weights}, inputs[:, :30], hooks=hooks)
    message = None
  except ValueError as e:
    message = str(e)
  sys.stdout.write(json.dumps({"error": message}) + "\n")
  sys.stdout.write(json.dumps(fused_kernels_on_a_mesh()) + "\n")


def fused_kernels_on_a_mesh() -> dict:
  """Largest |difference| from the reference of each Pallas kernel (interpreted, packed rows) and
  of the CPU kernel (unpacked rows) run per shard over a (data 2, fsdp 2, tensor 2) mesh, the kv
  heads split over tensor."""
  hooks = pe.make("rope").hooks(head_dim=8, n_heads=4, d_model=32, seq_len=L)
  rs = np.random.RandomState(3)
  q, k, v = (jnp.asarray(rs.standard_normal((4, L, heads, 8)), jnp.float32) for heads in (4, 2, 2))
  segments = np.ones((4, L), np.int32)
  segments[:, 20:] = 2
  positions = np.broadcast_to(np.arange(L, dtype=np.int32), (4, L))
  meta = jax.jit(lambda positions, segments: token_meta(hooks, positions, segments, segment_masking=True,
                                                          rng=None)[0])(positions, segments)
  want = np.asarray(jax.jit(lambda q, k, v, meta: attention.attend(q, k, v, meta, hooks,
                                                                   implementation="reference"))(q, k, v, meta))
  diffs = {}
  for kernel in ("pallas_gpu", "splash"):
    run = jax.jit(lambda q, k, v, meta, hooks, kernel=kernel: attention.attend(
        q, k, v, meta, hooks, implementation="fused", fused_kernel=kernel))
    with sharding.logical_context(sharding.make_mesh((2, 2, 2, 1)), sharding.DEFAULT_RULES):
      diffs[kernel] = float(np.abs(np.asarray(run(q, k, v, meta, hooks)) - want).max())
  # The CPU kernel: unpacked rows, head dim 16 (its smallest).
  hooks = pe.make("rope").hooks(head_dim=16, n_heads=4, d_model=64, seq_len=L)
  q, k, v = (jnp.asarray(rs.standard_normal((4, L, heads, 16)), jnp.float32) for heads in (4, 2, 2))
  one_row = meta._replace(segments=jnp.ones_like(meta.segments))
  want = np.asarray(jax.jit(lambda q, k, v, meta: attention.attend(q, k, v, meta, hooks,
                                                                   implementation="reference"))(q, k, v, one_row))
  run = jax.jit(lambda q, k, v, meta, hooks: attention.attend(q, k, v, meta, hooks, implementation="fused",
                                                              fused_kernel="cpu_flash", packed=False))
  with sharding.logical_context(sharding.make_mesh((2, 2, 2, 1)), sharding.DEFAULT_RULES):
    diffs["cpu_flash"] = float(np.abs(np.asarray(run(q, k, v, one_row, hooks)) - want).max())
  return {"fused_on_mesh": diffs}


if __name__ == "__main__":
  main()
