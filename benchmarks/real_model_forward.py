"""SmolLM2-135M (its GGUF file) forward + loss at long lengths: rope_lab vs transformers (CPU).

  python -m benchmarks.real_model_forward                      # 8K and 16K tokens
  python -m benchmarks.real_model_forward --lengths=8192 --repeats=0
  python -m benchmarks.real_model_forward --lengths=8192 --unrolled   # rope_lab's layers unrolled

Both systems read the same file from the asset store (``python -m
experiments.fetch_assets``) and score one window of L tokens of the Paul Graham essays
(summed next-token NLL, float32):

* ``rope_lab``: ``rope_lab.interop.gguf.load`` and the study's evaluation path
  (``window_nll``; chunked attention from ``CHUNKED_FROM`` tokens on);
* ``transformers``: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` with
  ``attn_implementation="sdpa"``, ``use_cache=False``, the loss by ``cross_entropy``.

Each measurement runs in its own subprocess (``--threads`` intra-op threads on both
sides) so its peak resident set size (``VmHWM``) is its own; the first call includes
compilation or warm-up, the best of ``--repeats`` further calls is the steady state. The
NLLs are printed: they agree to float32 rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.long_eval import _vm_hwm_kib


def _tokens(length: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rope_lab.data import assets  # pylint: disable=g-import-not-at-top
  from rope_lab.interop import gguf  # pylint: disable=g-import-not-at-top
  text = "\n\n".join(assets.paul_graham_essays().values())
  ids = gguf.tokenizer(assets.smollm2_gguf()).encode(text).ids
  if len(ids) < length + 1:
    raise SystemExit(f"the essays hold {len(ids)} tokens, fewer than {length + 1}")
  return np.asarray(ids[:length + 1], np.int32)


def worker_rope_lab(length: int, repeats: int, threads: int, unrolled: bool = False, dtype: str = "float32") -> dict:
  os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=true "
                             f"intra_op_parallelism_threads={threads}")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rope_lab.data import assets  # pylint: disable=g-import-not-at-top
  from rope_lab.data import Window  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import encoding_hooks, eval_model_config, window_nll  # pylint: disable=g-import-not-at-top
  from rope_lab.interop import gguf  # pylint: disable=g-import-not-at-top
  model = gguf.load(assets.smollm2_gguf(), scan_layers=not unrolled, compute_dtype=dtype)
  tokens = _tokens(length)
  window = Window(tokens[:-1], tokens[1:], np.ones(length, np.float32))
  cfg = eval_model_config(model.config, length)
  hooks = encoding_hooks(model.config, model.encoding, length)
  times = []
  for _ in range(1 + repeats):
    start = time.perf_counter()
    nll = window_nll(cfg, model.params, [window], hooks, batch_size=1)
    times.append(time.perf_counter() - start)
  return {"nll": nll.total, "first_s": times[0], "steady_s": min(times[1:] or times),
          "detail": f"jax {jax.__version__}, {cfg.compute_dtype} (cpu_matmul {cfg.cpu_matmul}), "
                    f"{cfg.attention} attention, chunk {cfg.chunk_size}, "
                    f"{'scanned' if cfg.scan_layers else 'unrolled'} layers"}


def worker_transformers(length: int, repeats: int, threads: int, unrolled: bool = False,
                        dtype: str = "float32") -> dict:
  del unrolled  # rope_lab's option
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from rope_lab.data import assets  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  path = assets.smollm2_gguf()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=getattr(torch, dtype),
      attn_implementation="sdpa").eval()
  tokens = torch.from_numpy(_tokens(length)).long()[None]
  times = []
  with torch.inference_mode():
    for _ in range(1 + repeats):
      start = time.perf_counter()
      logits = model(input_ids=tokens[:, :-1], use_cache=False).logits.float()
      nll = torch.nn.functional.cross_entropy(logits[0], tokens[0, 1:], reduction="sum")
      times.append(time.perf_counter() - start)
  return {"nll": float(nll), "first_s": times[0], "steady_s": min(times[1:] or times),
          "detail": f"torch {torch.__version__}, transformers {transformers.__version__}, {dtype}, sdpa, "
                    f"{torch.get_num_threads()} threads"}


WORKERS = {"rope_lab": worker_rope_lab, "transformers": worker_transformers}


def measure(system: str, length: int, repeats: int, threads: int, timeout: int, unrolled: bool,
            dtype: str = "float32") -> dict:
  command = [sys.executable, "-m", "benchmarks.real_model_forward", f"--worker={system}", f"--lengths={length}",
             f"--repeats={repeats}", f"--threads={threads}", f"--dtype={dtype}"] + (["--unrolled"] if unrolled else [])
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout} s"}
  if done.returncode != 0:
    return {"error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:200]}
  result = json.loads(done.stdout.strip().splitlines()[-1])
  result["peak_mib"] = result.pop("vm_hwm_kib") / 1024
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="8192,16384", help="comma-separated window lengths")
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, both sides")
  parser.add_argument("--repeats", type=int, default=1, help="steady-state calls after the first")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
  parser.add_argument("--unrolled", action="store_true",
                      help="rope_lab runs its 30 layers unrolled (default: one lax.scan, as gguf.load gives)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype of both systems (rope_lab bfloat16: its CPU matmul kernel where it can run)")
  parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
  args = parser.parse_args()
  lengths = [int(n) for n in args.lengths.split(",")]
  if args.worker:
    result = WORKERS[args.worker](lengths[0], args.repeats, args.threads, args.unrolled, args.dtype)
    result["vm_hwm_kib"] = _vm_hwm_kib()
    print(json.dumps(result))
    return
  print(f"SmolLM2-135M-Instruct Q4_1 GGUF, one window per length, {args.threads} threads per side, {args.dtype}, "
        f"load average {os.getloadavg()[0]:.2f}")
  print(f"{'system':<13} {'tokens':>7} {'first s':>8} {'steady s':>9} {'peak MiB':>9} {'NLL/token':>10}")
  for length in lengths:
    rows = {}
    for system in WORKERS:
      rows[system] = r = measure(system, length, args.repeats, args.threads, args.timeout, args.unrolled,
                                 args.dtype)
      if "error" in r:
        print(f"{system:<13} {length:>7} {r['error']}")
        continue
      print(f"{system:<13} {length:>7} {r['first_s']:>8.1f} {r['steady_s']:>9.1f} {r['peak_mib']:>9.0f} "
            f"{r['nll'] / length:>10.5f}   {r['detail']}", flush=True)
    ours, theirs = rows["rope_lab"], rows["transformers"]
    if "error" not in ours and "error" not in theirs:
      print(f"{'ratio':<13} {length:>7} time rope_lab/transformers {ours['steady_s'] / theirs['steady_s']:.2f}x, "
            f"peak {ours['peak_mib'] / theirs['peak_mib']:.2f}x", flush=True)


if __name__ == "__main__":
  main()
