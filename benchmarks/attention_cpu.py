"""Causal attention alone on CPU: rope_lab's C++ kernel and chunked attention vs PyTorch's SDPA.

  python -m benchmarks.attention_cpu                                    # tiny heads, 8K and 32K
  python -m benchmarks.attention_cpu --shape=smollm2 --lengths=8192 --chunks=256,512,1024

One row of random q, k, v (float32) of the study's tiny model's heads (4 of 32) or
SmolLM2-135M's (9 query / 3 kv heads of 64), causal, no positional encoding (the rotation
happens before the attention in both systems and is not timed). rope_lab runs its C++ flash
kernel (``rope_lab/kernels``, what the ``fused`` attention and the evaluation use on CPU) and
``attention.chunked`` jitted, at each ``--chunks`` block length; PyTorch runs
``scaled_dot_product_attention(is_causal=True, enable_gqa=True)`` under ``inference_mode``.
Each system runs in its own subprocess (so neither's thread pools or allocator affect the
other), times 1 + ``--repeats`` calls and reports the best after the first; the outputs'
sums are printed so that a wrong result shows. ``--threads=1`` pins every subprocess to one
core (``taskset``) to compare the time per core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = {"tiny": (4, 4, 32), "smollm2": (9, 3, 64)}  # query heads, kv heads, head dim


def _arrays(shape: str, length: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  n_heads, n_kv, head_dim = SHAPES[shape]
  rng = np.random.default_rng(0)
  return (rng.standard_normal((1, length, n_heads, head_dim), dtype=np.float32),
          rng.standard_normal((1, length, n_kv, head_dim), dtype=np.float32),
          rng.standard_normal((1, length, n_kv, head_dim), dtype=np.float32))


def _best(call, repeats: int) -> tuple[float, object]:
  out = call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - start)
  return min(times), out


def worker_rope_lab(shape: str, length: int, chunk: int, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rope_lab import pe  # pylint: disable=g-import-not-at-top
  from rope_lab.model import attention
  n_heads, n_kv, head_dim = SHAPES[shape]
  q, k, v = _arrays(shape, length)
  hooks = pe.make("nope").hooks(head_dim=head_dim, n_heads=n_heads, d_model=n_heads * head_dim, seq_len=length)
  index = jnp.arange(length, dtype=jnp.int32)[None]
  meta = attention.TokenMeta(index, index, jnp.ones_like(index), jnp.zeros_like(index))

  @jax.jit
  def attend(q, k, v):
    rot = attention.Rotated(q.reshape(1, length, n_kv, n_heads // n_kv, head_dim), k)
    return attention.chunked(rot, v, meta, hooks, chunk_size=chunk)

  seconds, out = _best(lambda: jax.block_until_ready(attend(q, k, v)), repeats)
  return {"seconds": seconds, "sum": float(out.sum()), "detail": f"jax {jax.__version__}, chunk {chunk}"}


def worker_cpu_flash(shape: str, length: int, chunk: int, repeats: int) -> dict:
  del chunk
  import jax  # pylint: disable=g-import-not-at-top
  from rope_lab.model.kernels import cpu_flash  # pylint: disable=g-import-not-at-top
  ready, detail = cpu_flash.available()
  if not ready:
    raise RuntimeError(detail)
  q, k, v = _arrays(shape, length)
  attend = jax.jit(lambda q, k, v: cpu_flash.attention(q, k, v, SHAPES[shape][2] ** -0.5))
  seconds, out = _best(lambda: jax.block_until_ready(attend(q, k, v)), repeats)
  return {"seconds": seconds, "sum": float(out.sum()), "detail": f"jax {jax.__version__}, C++ kernel"}


def worker_torch(shape: str, length: int, chunk: int, repeats: int) -> dict:
  del chunk
  import torch  # pylint: disable=g-import-not-at-top
  q, k, v = (torch.from_numpy(x).transpose(1, 2).contiguous() for x in _arrays(shape, length))
  sdpa = torch.nn.functional.scaled_dot_product_attention
  with torch.inference_mode():
    seconds, out = _best(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True), repeats)
  return {"seconds": seconds, "sum": float(out.sum()),
          "detail": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


WORKERS = {"rope_lab": worker_rope_lab, "cpu_flash": worker_cpu_flash, "torch": worker_torch}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
  parser.add_argument("--lengths", default="8192,32768")
  parser.add_argument("--chunks", default="256,512,1024",
                      help="block lengths of rope_lab's chunked attention to time (the C++ kernel always runs)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, choices=(0, 1), default=0,
                      help="1: pin each subprocess to one core (taskset -c 0); 0: all cores")
  parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
  parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  if args.worker:
    print(json.dumps(WORKERS[args.worker](args.shape, lengths[0], args.chunk, args.repeats)))
    return
  chunks = [int(x) for x in args.chunks.split(",")]
  if any(c < 1 for c in chunks) or any(n < 1 for n in lengths):
    parser.error("--chunks and --lengths must be positive integers")
  pin = ["taskset", "-c", "0"] if args.threads == 1 else []
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  print(f"shape {args.shape} (query heads, kv heads, head dim: {SHAPES[args.shape]}), causal, float32, "
        f"{'1 core' if pin else f'{os.cpu_count()} cores'}")
  print(f"{'system':18s} {'tokens':>7s} {'best s':>8s} {'vs torch':>8s}  output sum")
  for length in lengths:
    runs = [("torch", 0), ("cpu_flash", 0)] + [("rope_lab", c) for c in chunks]
    results = {}
    for worker, chunk in runs:
      command = pin + [sys.executable, "-m", "benchmarks.attention_cpu", f"--worker={worker}",
                       f"--shape={args.shape}", f"--lengths={length}", f"--chunk={chunk}",
                       f"--repeats={args.repeats}"]
      done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
      if done.returncode != 0:
        print(f"{worker}: failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}")
        continue
      results[(worker, chunk)] = json.loads(done.stdout.strip().splitlines()[-1])
    torch_s = results.get(("torch", 0), {}).get("seconds")
    for (worker, chunk), r in results.items():
      name = f"rope_lab:{chunk}" if worker == "rope_lab" else worker
      ratio = f"{r['seconds'] / torch_s:.2f}x" if torch_s else ""
      print(f"{name:18s} {length:7d} {r['seconds']:8.3f} {ratio:>8s}  {r['sum']:.4f}   ({r['detail']})")


if __name__ == "__main__":
  main()
