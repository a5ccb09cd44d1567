"""Long-context evaluation: rope_lab (JAX, its CPU attention kernel) vs transformers (PyTorch CPU, SDPA).

  python -m benchmarks.long_eval                          # 8K and 32K tokens
  python -m benchmarks.long_eval --lengths=131072 --systems=rope_lab --rounds=1 --repeats=0
  python -m benchmarks.long_eval --shape=smollm2 --lengths=8192 --systems=rope_lab,transformers

Both systems run the study's tiny model shape (4 layers, width 128, 4 heads, SwiGLU 512,
byte vocabulary) with the *same* random weights: rope_lab initialises them and
``rope_lab.interop.hf.save_pretrained`` writes them as a Llama checkpoint that
``LlamaForCausalLM`` loads with ``attn_implementation="sdpa"``. Systems:

* ``rope_lab``: one CPU device, exactly the study's evaluation path (``window_nll`` with the
  ``fused`` attention: the C++ flash kernel of ``rope_lab/kernels``; with
  ``ROPE_LAB_CPU_KERNEL=0`` in the environment, the chunked attention in blocks of
  ``eval_chunk_size`` tokens unless ``--chunk`` sets them);
* ``rope_lab:N``: the same program with the parameters placed on a tensor-parallel mesh
  of N host devices (``--xla_force_host_platform_device_count``) by the model's own
  logical-axis rules, so the attention of each group of heads runs on its own thread;
* ``rope_lab:seqN``: the row split along its length over N host devices (the mesh's
  sequence axis, ``rope_lab.model.context_parallel``): activations are not replicated, only the
  parameters; attention gathers the row's keys and values;
* ``transformers``: ``LlamaForCausalLM`` in PyTorch (all CPU threads).

``--shape=smollm2`` runs SmolLM2-135M's shape (30 layers, width 576, 9 query / 3 kv heads
of 64, vocabulary 49152, tied embeddings) with random weights instead of the tiny model.

Each measurement runs in its own subprocess, which scores one window of L tokens (summed
next-token NLL, float32) 1 + ``--repeats`` times: the first call includes compilation
(XLA) or allocator warm-up, the best of the others is the steady state. Each system runs
``--rounds`` processes per length, alternating with the others so that all see the same
background load (the development machine is shared); the best times and the largest
peak are reported. Peak memory is the child's high-water resident set size (``VmHWM`` of
/proc/self/status, read as the child exits; the parent cross-checks it against
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``), so interpreter, libraries and
weights count for every system alike. The NLLs are printed: with the same weights they
agree to float32 rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SHAPES = {
    "tiny": dict(vocab_size=258, d_model=128, n_layers=4, n_heads=4, mlp_dim=512),
    # SmolLM2-135M's shape (random weights: only the timing and memory are compared).
    "smollm2": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                    mlp_dim=1536, tied_embeddings=True),
}


def _tokens(length: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.random.default_rng(seed).integers(0, 256, size=(1, length + 1)).astype(np.int32)


def make_checkpoint(directory: str, max_length: int, shape: str = "tiny") -> None:
  """Random rope_lab weights, saved as a transformers Llama checkpoint in ``directory``."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rope_lab import pe  # pylint: disable=g-import-not-at-top
  from rope_lab.interop import hf  # pylint: disable=g-import-not-at-top
  from rope_lab.model.skeleton import ModelConfig, init_params  # pylint: disable=g-import-not-at-top
  cfg = ModelConfig(**SHAPES[shape], attention="dot_product")
  encoding = pe.make("rope")
  hooks = encoding.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=16)
  params = jax.tree.map(np.asarray, init_params(cfg, hooks, jax.random.key(0)))
  hf.save_pretrained(directory, cfg, params, encoding, max_position_embeddings=max_length)


def worker_rope_lab(checkpoint: str, length: int, chunk: int, repeats: int, host_devices: int,
                    split: str = "tensor", shape: str = "tiny") -> dict:
  # Must precede the first jax import: the CPU backend reads it once. With n > 1 host
  # devices the attention heads (and MLP columns) are split over a tensor-parallel mesh
  # by the model's own logical-axis rules, so XLA runs the chunked attention of each half
  # of the heads on its own thread; with 1 the program is the study's evaluation as is.
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={host_devices}"
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rope_lab import pe  # pylint: disable=g-import-not-at-top
  from rope_lab.model import attention_fused
  from rope_lab.running import sharding
  from rope_lab.data import Window  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import eval_model_config, window_nll  # pylint: disable=g-import-not-at-top
  from rope_lab.interop import hf  # pylint: disable=g-import-not-at-top
  from rope_lab.model.skeleton import ModelConfig, param_logical_axes  # pylint: disable=g-import-not-at-top
  cfg = ModelConfig(**SHAPES[shape])
  encoding = pe.make("rope")
  hooks = encoding.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=length)
  params = hf.load_params(checkpoint, cfg, hooks)
  # tensor: heads (and MLP columns) split, the residual stream replicated on each device;
  # sequence: the row split along its length (context parallelism), nothing replicated
  # but the parameters, attention balanced over front and back chunks.
  mesh = sharding.make_mesh((1, 1, host_devices, 1) if split == "tensor" else (1, 1, 1, host_devices))
  rules = sharding.DEFAULT_RULES
  params = jax.device_put(params, nn.logical_to_mesh_sharding(param_logical_axes(cfg, hooks), mesh, rules))
  tokens = _tokens(length)[0]
  window = Window(tokens[:-1], tokens[1:], np.ones(length, np.float32))
  cfg = eval_model_config(cfg, length, chunk_size=chunk or None)
  times = []
  with sharding.logical_context(mesh, rules):
    for _ in range(1 + repeats):
      start = time.perf_counter()
      nll = window_nll(cfg, params, [window], hooks, batch_size=1)
      times.append(time.perf_counter() - start)
  ran = sorted({c.kernel for c in attention_fused.CHOICES}) if cfg.attention == "fused" else [cfg.attention]
  if split == "sequence" and host_devices > 1:  # context parallelism runs its own blockwise attention
    ran = ["context-parallel chunked"]
  return {"nll": nll.total, "first_s": times[0], "steady_s": min(times[1:] or times),
          "detail": f"jax {jax.__version__}, attention {'+'.join(ran)}, chunk {cfg.chunk_size}, "
                    f"{host_devices} host device(s)" + (f" over {split}" if host_devices > 1 else "")}


def worker_transformers(checkpoint: str, length: int, chunk: int, repeats: int, host_devices: int,
                        split: str = "tensor", shape: str = "tiny") -> dict:
  del chunk, host_devices, split, shape  # rope_lab only (the checkpoint fixes the shape)
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  model = transformers.LlamaForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa",
                                                        torch_dtype=torch.float32).eval()
  tokens = torch.from_numpy(_tokens(length)).long()
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  times = []
  with torch.inference_mode():
    for _ in range(1 + repeats):
      start = time.perf_counter()
      logits = model(input_ids=inputs, use_cache=False).logits.float()
      nll = torch.nn.functional.cross_entropy(logits[0], targets[0], reduction="sum")
      times.append(time.perf_counter() - start)
  return {"nll": float(nll), "first_s": times[0], "steady_s": min(times[1:] or times),
          "detail": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                    f"{model.config._attn_implementation}, {torch.get_num_threads()} threads"}  # pylint: disable=protected-access


WORKERS = {"rope_lab": worker_rope_lab, "transformers": worker_transformers}


def parse_system(name: str) -> tuple[str, int, str]:
  """'rope_lab' -> ('rope_lab', 1, 'tensor'); 'rope_lab:2' -> heads over 2 host devices;
  'rope_lab:seq2' -> ('rope_lab', 2, 'sequence'): the row split over 2 host devices."""
  worker, _, devices = name.partition(":")
  split = "sequence" if devices.startswith("seq") else "tensor"
  devices = devices[3:] if split == "sequence" else devices
  if worker not in WORKERS or (devices and (not devices.isdigit() or int(devices) < 1)) \
      or (devices and worker != "rope_lab"):
    raise ValueError(f"unknown system {name!r}; use rope_lab, rope_lab:<host devices>, "
                     f"rope_lab:seq<host devices> or transformers")
  return worker, int(devices or 1), split


def measure(system: str, checkpoint: str, length: int, timeout: int, chunk: int, repeats: int,
            shape: str = "tiny") -> dict:
  """Runs one worker in a fresh subprocess; adds its peak RSS (MiB)."""
  worker, host_devices, split = parse_system(system)
  command = [sys.executable, "-m", "benchmarks.long_eval", f"--worker={worker}",
             f"--checkpoint={checkpoint}", f"--lengths={length}", f"--chunk={chunk}", f"--repeats={repeats}",
             f"--host_devices={host_devices}", f"--split={split}", f"--shape={shape}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  except subprocess.TimeoutExpired:
    return {"system": system, "length": length, "error": f"timed out after {timeout} s"}
  after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  if done.returncode != 0:
    lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
    return {"system": system, "length": length, "error": lines[-1][:200]}
  result = json.loads(done.stdout.strip().splitlines()[-1])
  # RUSAGE_CHILDREN holds the largest child so far: when it grew, it is this child's peak
  # and must agree with the child's own VmHWM.
  if after > before and abs(after - result["vm_hwm_kib"]) > 0.05 * after:
    result["detail"] += f"; ru_maxrss {after / 1024:.0f} MiB"
  result["peak_mib"] = result["vm_hwm_kib"] / 1024
  return {"system": system, "length": length, **result}


def _vm_hwm_kib() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1])
  return 0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="8192,32768", help="comma-separated window lengths")
  parser.add_argument("--systems", default="rope_lab,rope_lab:2,rope_lab:seq2,transformers",
                      help="rope_lab (one CPU device, as the study evaluates), rope_lab:N (attention heads "
                           "split over N host devices), rope_lab:seqN (rows split along their length over N "
                           "host devices), transformers")
  parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
  parser.add_argument("--chunk", type=int, default=0,
                      help="rope_lab's attention block length (0: the evaluation's own, eval_chunk_size)")
  parser.add_argument("--host_devices", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--split", default="tensor", help=argparse.SUPPRESS)
  parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                      help="model shape: the study's tiny model or SmolLM2-135M's (random weights)")
  parser.add_argument("--repeats", type=int, default=2,
                      help="steady-state calls per process, best kept (0: report the first call)")
  parser.add_argument("--rounds", type=int, default=2,
                      help="processes per system and length, alternating systems (best time, largest peak)")
  parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
  parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
  args = parser.parse_args()
  lengths = [int(n) for n in args.lengths.split(",")]
  if args.worker:
    result = WORKERS[args.worker](args.checkpoint, lengths[0], args.chunk, args.repeats, args.host_devices,
                                  args.split, args.shape)
    result["vm_hwm_kib"] = _vm_hwm_kib()
    print(json.dumps(result))
    return
  systems = args.systems.split(",")
  for system in systems:
    try:
      parse_system(system)
    except ValueError as e:
      parser.error(str(e))
  with tempfile.TemporaryDirectory() as checkpoint:
    make_checkpoint(checkpoint, max(lengths), args.shape)
    print(f"model: {SHAPES[args.shape]}, one window per length, same weights in both systems; {os.cpu_count()} CPUs")
    print(f"{'system':<13} {'tokens':>7} {'first call s':>13} {'steady s':>9} {'tokens/s':>9} "
          f"{'peak MiB':>9} {'NLL/token':>10}")
    for length in lengths:
      best: dict[str, dict] = {}
      for _ in range(args.rounds):  # alternate systems so both see the same background load
        for system in systems:
          r = measure(system, checkpoint, length, args.timeout, args.chunk, args.repeats, args.shape)
          if "error" in r:
            best[system] = r
            continue
          if system not in best or "error" in best[system]:
            best[system] = r
          else:
            kept = best[system]
            kept["first_s"] = min(kept["first_s"], r["first_s"])
            kept["steady_s"] = min(kept["steady_s"], r["steady_s"])
            kept["peak_mib"] = max(kept["peak_mib"], r["peak_mib"])
      for system in systems:
        r = best[system]
        if "error" in r:
          print(f"{system:<13} {length:>7} failed: {r['error']}", flush=True)
          continue
        print(f"{system:<13} {length:>7} {r['first_s']:>13.2f} {r['steady_s']:>9.2f} "
              f"{length / r['steady_s']:>9.0f} {r['peak_mib']:>9.0f} {r['nll'] / length:>10.5f}   "
              f"({r['detail']})", flush=True)


if __name__ == "__main__":
  main()
