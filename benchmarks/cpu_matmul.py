"""rope_lab's bfloat16 CPU matmul kernel next to PyTorch bfloat16 and XLA float32 / bfloat16.

  python -m benchmarks.cpu_matmul [--threads=2] [--repeats=10]

Shapes [M, K] x [K, N] of SmolLM2-135M at 4,096 tokens (q/o, k/v, MLP up and down, a
1,024-token block of the 49,152-word output layer) and the transposed products of the
backward pass. Best of ``--repeats`` calls each, TFLOP/s = 2 M N K / time; the load
average is printed before and after (the figures are only as good as the machine is idle).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SHAPES = {  # name: (M, K, N, transpose_a, transpose_b)
    "q/o proj": (4096, 576, 576, False, False),
    "k/v proj": (4096, 576, 192, False, False),
    "mlp up": (4096, 576, 1536, False, False),
    "mlp down": (4096, 1536, 576, False, False),
    "lm-head block": (1024, 576, 49152, False, False),
    "dX (mlp up)": (4096, 1536, 576, False, True),
    "dW (mlp up)": (576, 4096, 1536, True, False),
}


def _best(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args(argv)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true "
                             f"intra_op_parallelism_threads={args.threads}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from rope_lab.model.kernels import cpu_matmul  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  ready, detail = cpu_matmul.available()
  print(f"load average {os.getloadavg()[0]:.2f}; {args.threads} threads; jax {jax.__version__}, torch "
        f"{torch.__version__}; kernel: {detail if not ready else 'built'}")
  print(f"{'shape':<15} {'M x K x N':>20} {'rope_lab':>9} {'torch bf16':>11} {'xla bf16':>9} {'xla f32':>8}  TFLOP/s")
  rng = np.random.default_rng(0)
  for name, (m, k, n, ta, tb) in SHAPES.items():
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    flops = 2 * m * n * k
    ja, jb = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
    xla = lambda dtype: jax.jit(lambda x, y: jax.lax.dot_general(x.astype(dtype), y.astype(dtype), dims,
                                                                  preferred_element_type=jnp.float32))
    rows = {}
    if ready:
      ours = jax.jit(lambda x, y: cpu_matmul._call(x, y, jnp.float32, ta, tb))  # pylint: disable=protected-access
      rows["rope_lab"] = _best(lambda: ours(ja, jb).block_until_ready(), args.repeats)
    ta_t, tb_t = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
    ta_t, tb_t = (ta_t.T if ta else ta_t), (tb_t.T if tb else tb_t)
    rows["torch"] = _best(lambda: ta_t @ tb_t, args.repeats)
    for dtype, key in ((jnp.bfloat16, "xla bf16"), (jnp.float32, "xla f32")):
      f, fa, fb = xla(dtype), jnp.asarray(a, dtype), jnp.asarray(b, dtype)
      rows[key] = _best(lambda: f(fa, fb).block_until_ready(), args.repeats)
    cells = {key: f"{flops / t / 1e12:.3f}" for key, t in rows.items()}
    print(f"{name:<15} {f'{m} x {k} x {n}':>20} {cells.get('rope_lab', '-'):>9} {cells['torch']:>11} "
          f"{cells['xla bf16']:>9} {cells['xla f32']:>8}", flush=True)
  print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
