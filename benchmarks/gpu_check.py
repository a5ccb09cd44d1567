"""One prepared accelerator check: fused-kernel correctness, then MFU at 2K and a 32K step.

  python -m benchmarks.gpu_check            # on a GPU (or TPU) host, ~5 minutes
  python -m benchmarks.gpu_check --dry      # anywhere: tiny shapes, Pallas kernels interpreted

1. Correctness: every fused kernel the platform has (GPU: cudnn, pallas_gpu; TPU:
   splash) against the reference path on packed rows with grouped queries, for RoPE,
   YaRN (temperature), xPos, LongRoPE and, for cuDNN, ALiBi: largest |difference| of the
   output and of the q/k/v gradients, in float32 and bfloat16.
2. MFU: configs/gpu_125m.py in bfloat16 with attention='fused', batch 16 x 2048 tokens,
   no accumulation (the target: >= 40% on an H100/H200-class GPU, batch 16 fitting);
   on a GPU once as chosen automatically (packed training rows: pallas_gpu) and once
   with cuDNN forced (segment mask as an array).
3. Long context: one training step of the same model on 1 x 32768 tokens (YaRN factor 16
   over 2048): its time and the device's peak memory, or the out-of-memory error.

``--dry`` shrinks all three (L 64-256, a 2-layer width-64 model, 2 steps) and forces
the Pallas kernels in interpret mode, so CI-less machines can check the script runs.
The last lines are a compact summary; paste them into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KERNELS_BY_PLATFORM = {"gpu": ("cudnn", "pallas_gpu"), "tpu": ("splash",)}
DRY_KERNELS = ("pallas_gpu", "splash")  # interpretable anywhere
ENCODINGS = {
    "rope": {},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 64},
    "xpos": {"scale_base": 512.0},
    "longrope": {"short_factor": (1.0,) * 32, "long_factor": tuple(1.0 + i / 8 for i in range(32)),
                 "factor": 4.0, "original_max_position_embeddings": 64},
    "alibi": {},
}
TOLERANCE = {"float32": 2e-3, "bfloat16": 6e-2}  # TF32 matmuls on GPU; bfloat16 inputs


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dry", action="store_true", help="tiny shapes, interpreted kernels (any machine)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps of the MFU benchmark")
  parser.add_argument("--long_len", type=int, default=32768, help="tokens of the long training step")
  return parser.parse_args(argv)


def correctness(kernels, dry: bool) -> list[str]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rope_lab import pe  # pylint: disable=g-import-not-at-top
  from rope_lab.model import attention
  from rope_lab.model import attention_fused
  from rope_lab.model.skeleton import token_meta  # pylint: disable=g-import-not-at-top

  b, length, n_heads, n_kv, head_dim = (2, 64, 4, 2, 64) if dry else (2, 1024, 8, 2, 64)
  rs = np.random.RandomState(0)
  split = length // 3
  segments = jnp.asarray(np.stack([[1] * split + [2] * (length - split), [1] * length]), jnp.int32)
  positions = jnp.asarray(np.stack([np.r_[np.arange(split), np.arange(length - split)], np.arange(length)]),
                          jnp.int32)
  lines = []
  for dtype_name in ("float32", "bfloat16"):
    dtype = getattr(jnp, dtype_name)
    q, k, v, cot = (jnp.asarray(rs.standard_normal(s), dtype) for s in
                    [(b, length, n_heads, head_dim), (b, length, n_kv, head_dim), (b, length, n_kv, head_dim),
                     (b, length, n_heads, head_dim)])
    for kernel in kernels:
      choice = attention_fused.KernelChoice(kernel, "check", interpret=dry)
      for name, params in ENCODINGS.items():
        hooks = pe.make(name, **params).hooks(head_dim=head_dim, n_heads=n_heads, d_model=n_heads * head_dim,
                                               seq_len=length)
        features = attention_fused.features_of(hooks, packed=True, soft_cap=None, dtype=dtype)
        if attention_fused._unsupported(kernel, features):  # pylint: disable=protected-access
          continue
        meta = token_meta(hooks, positions, segments, segment_masking=True, rng=None)[0]

        def fused(q, k, v, hooks=hooks, meta=meta):
          rot = attention.rotate(hooks, q, k, meta.positions)
          return attention_fused.attend(choice, rot.q.reshape(q.shape), rot.k, v, meta.segments, meta.positions,
                                        hooks, packed=True, soft_cap=None)

        def reference(q, k, v, hooks=hooks, meta=meta):
          f32 = lambda x: x.astype(jnp.float32)
          return attention.attend(f32(q), f32(k), f32(v), meta, hooks, implementation="reference")

        def out_and_grads(f):
          out, pullback = jax.vjp(f, q, k, v)
          return out, pullback(cot.astype(out.dtype))

        try:
          got, got_grads = jax.jit(lambda: out_and_grads(fused))()
          want, want_grads = jax.jit(lambda: out_and_grads(reference))()
          diff = lambda a, b: float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())
          worst = max([diff(got, want)] + [diff(g, w) for g, w in zip(got_grads, want_grads)])
          ok = worst <= TOLERANCE[dtype_name] * max(1.0, float(jnp.abs(want).max()))
          lines.append(f"{'ok  ' if ok else 'FAIL'} {kernel:10s} {name:8s} {dtype_name:8s} max|diff| {worst:.2e}")
        except Exception as e:  # pylint: disable=broad-except  (a kernel that does not compile is a finding)
          lines.append(f"FAIL {kernel:10s} {name:8s} {dtype_name:8s} {type(e).__name__}: {str(e)[:200]}")
        print(lines[-1], flush=True)
  return lines


def gpu_125m_config(dry: bool):
  from benchmarks import train_throughput  # pylint: disable=g-import-not-at-top
  from rope_lab import config as config_lib  # pylint: disable=g-import-not-at-top
  config = train_throughput.gpu_125m_config_dict()
  config.model.attention = "fused"
  config.update(grad_accum_steps=1, mesh_shape=(-1, 1, 1))
  if dry:
    config.model.update(d_model=64, n_layers=2, n_heads=2, mlp_dim=128, compute_dtype="float32",
                        fused_kernel="pallas_gpu")
  return config, config_lib, train_throughput


def mfu(args, fused_kernel: str | None = None) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  from rope_lab.model import attention_fused  # pylint: disable=g-import-not-at-top
  config, config_lib, tt = gpu_125m_config(args.dry)
  if fused_kernel:
    config.model.fused_kernel = fused_kernel
  batch, length = (2, 128) if args.dry else (16, 2048)
  config.update(global_batch_size=batch, seq_len=length)
  exp = config_lib.experiment_from_config_dict(config)
  attention_fused.CHOICES.clear()
  try:
    trainer = tt.RopeLabTrainer(exp)
    trainer.run(1 if args.dry else 3)
    steps = 2 if args.dry else args.steps
    best = max(trainer.tokens_per_step * steps / trainer.run(steps) for _ in range(1 if args.dry else 3))
  except Exception as e:  # pylint: disable=broad-except  (out of memory is a result)
    return f"MFU {batch} x {length}: FAILED {type(e).__name__}: {str(e)[:300]}"
  kernels = sorted({c.kernel for c in attention_fused.CHOICES})
  device = jax.devices()[0]
  peak = next((v for k, v in tt.PEAK_BF16_FLOPS.items() if k in device.device_kind), None)
  flops = tt.model_flops_per_token(exp) * best
  share = f"MFU {100 * flops / peak:.1f}%" if peak else "MFU n/a (unknown peak)"
  return (f"MFU {batch} x {length} {exp.model.compute_dtype} fused[{','.join(kernels)}]: "
          f"{best:,.0f} tokens/s, {flops / 1e12:.1f} TFLOP/s, {share}, loss {trainer.last_loss:.3f}")


def long_step(args) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  from rope_lab.model import attention_fused  # pylint: disable=g-import-not-at-top
  config, config_lib, tt = gpu_125m_config(args.dry)
  length = 256 if args.dry else args.long_len
  config.pe = config_lib.pe_config_dict("yarn", factor=length / 2048 if not args.dry else 2.0,
                                        original_max_position_embeddings=2048 if not args.dry else 128)
  config.update(global_batch_size=1, seq_len=length)
  exp = config_lib.experiment_from_config_dict(config)
  attention_fused.CHOICES.clear()
  try:
    trainer = tt.RopeLabTrainer(exp)
    trainer.run(1)
    seconds = trainer.run(1)
  except Exception as e:  # pylint: disable=broad-except  (out of memory is a result)
    return f"step 1 x {length}: FAILED {type(e).__name__}: {str(e)[:300]}"
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  kernels = sorted({c.kernel for c in attention_fused.CHOICES})
  return (f"step 1 x {length} fused[{','.join(kernels)}]: {seconds:.2f} s, peak "
          + (f"{peak / 2 ** 30:.1f} GiB" if peak else "n/a") + f", loss {trainer.last_loss:.3f}")


def main(argv=None):
  args = parse_args(argv)
  if args.dry:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.default_backend()
  kernels = DRY_KERNELS if args.dry else KERNELS_BY_PLATFORM.get(platform, ())
  print(f"platform {platform}: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}; "
        f"kernels {kernels}{' (interpreted)' if args.dry else ''}", flush=True)
  if not kernels:
    sys.exit(f"no fused kernel on platform {platform!r}; run with --dry to check the script itself")
  checks = correctness(kernels, args.dry)
  summary = [f"correctness: {sum(l.startswith('ok') for l in checks)}/{len(checks)} ok"]
  summary += [l for l in checks if not l.startswith("ok")]
  # Training rows carry segment ids, so 'auto' picks pallas_gpu on a GPU; cuDNN then needs
  # the segment mask as an [B, 1, L, L] array, measured as the alternative.
  parts = [mfu] + ([lambda a: mfu(a, "cudnn")] if platform == "gpu" and not args.dry else []) + [long_step]
  for part in parts:
    start = time.perf_counter()
    summary.append(part(args) + f"  [{time.perf_counter() - start:.0f} s]")
    print(summary[-1], flush=True)
  print("\n== summary ==\n" + "\n".join(summary))


if __name__ == "__main__":
  main(sys.argv[1:])
