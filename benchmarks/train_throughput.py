"""Training throughput of rope_lab next to Hugging Face transformers, and encoding costs.

CPU (default): one Llama-style model (vocab 256, width 256, 4 layers, 4 heads, SwiGLU
1024, RoPE, rows of 256, batch 16, float32) trained with AdamW and gradient clipping by
rope_lab's own train step (rope_lab.training.step, as `experiments.train` runs it) and by
transformers' LlamaForCausalLM (PyTorch eager, attn_implementation='sdpa') with the same
thread count. Rounds alternate between the two; each side's best round is reported, then
the step time of YaRN and xPos relative to NoPE at the same shape.

  python -m benchmarks.train_throughput [--threads=2] [--steps=10] [--rounds=3]

GPU: the ~125M model of configs/gpu_125m.py in bfloat16 and its model FLOP utilisation,
(6 N + 12 n_layers d_attn L) tokens / (time x peak) with N the parameters outside the
input embedding (PaLM's convention: attention counted without the causal half).

  python -m benchmarks.train_throughput --device=gpu [--batch=16] [--seq_len=2048]

Results and the machine they came from: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Read by XLA when JAX starts, so set before JAX is imported (see main). None by default:
# on this shape the candidates measured (YNNPACK fusion types on/off, XNNPACK dots, 512-bit
# vectors, fast math, the concurrency-optimised scheduler, the older fusion emitters) all
# stayed within noise of XLA's defaults, whose dots already run at ~160 GFLOP/s per core.
CPU_XLA_FLAGS = ""

# Dense bfloat16 peak FLOP/s by device kind (SXM parts; PCIe H100 is 756 TFLOP/s).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="CPU threads for both frameworks (default: all cores)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the first round")
  parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
  parser.add_argument("--which", choices=("both", "jax", "torch"), default="both")
  parser.add_argument("--attention", default="dot_product", help="rope_lab attention implementation")
  parser.add_argument("--encodings", default="nope,yarn,xpos",
                      help="encodings whose step time is compared ('' skips; the first is the baseline)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="CPU compute dtype of both sides (parameters and optimizer state stay float32; "
                           "PyTorch runs bfloat16 under autocast)")
  parser.add_argument("--cpu_matmul", choices=("auto", "on", "off"), default="auto",
                      help="rope_lab's ModelConfig.cpu_matmul (the bfloat16 CPU kernel)")
  parser.add_argument("--batch", type=int, default=None, help="rows per step")
  parser.add_argument("--seq_len", type=int, default=None, help="tokens per row")
  parser.add_argument("--peak_tflops", type=float, default=None, help="GPU peak, if not known")
  parser.add_argument("--xla_flags", default=None, help="replaces CPU_XLA_FLAGS")
  return parser.parse_args(argv)


# ----------------------------------------------------------------------------- rope_lab


ENCODINGS = {
    "nope": {},
    "rope": {"base": 10000.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 64},
    "xpos": {},
    "alibi": {},
}


def rope_lab_experiment(*, encoding: str, attention: str, batch: int, seq_len: int,
                        model: dict | None = None):
  from configs import tiny_cpu  # pylint: disable=g-import-not-at-top
  from rope_lab import config as config_lib  # pylint: disable=g-import-not-at-top
  config = tiny_cpu.get_config()  # every field, then the benchmark's shape
  config.model.update(vocab_size=256, d_model=256, n_layers=4, n_heads=4, mlp_dim=1024,
                      mlp="swiglu", norm="rms", attention=attention)
  if model:
    config.model.update(**model)
  config.pe = config_lib.pe_config_dict(encoding, **ENCODINGS.get(encoding, {}))
  config.update(seq_len=seq_len, global_batch_size=batch, steps=100_000, warmup_steps=100,
                learning_rate=1e-3, weight_decay=0.1, grad_clip_norm=1.0, mesh_shape=(-1, 1, 1))
  return config_lib.experiment_from_config_dict(config)


class RopeLabTrainer:
  """rope_lab's compiled train step on a fixed random batch."""

  def __init__(self, exp, seed: int = 0):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from rope_lab.running import sharding  # pylint: disable=g-import-not-at-top
    from rope_lab.training import step as train_step
    self._jax, self._sharding = jax, sharding
    self.program = train_step.build_program(exp)
    setup = self.program.setup
    self.state = self.program.init_state(seed)
    batch, length = exp.train.global_batch_size, exp.train.seq_len
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, exp.model.vocab_size, (batch, length + 1), dtype=np.int32)
    local = {
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)),
        "segment_ids": np.ones((batch, length), np.int32),
        "loss_mask": np.ones((batch, length), np.float32),
    }
    self.batch = sharding.global_batch(local, setup.batch_sharding, batch)
    self.tokens_per_step = batch * length
    self.last_loss = None

  def run(self, steps: int) -> float:
    """Seconds for ``steps`` steps, dispatched back to back as the training loop does."""
    setup = self.program.setup
    with self._sharding.logical_context(setup.mesh, setup.rules):
      start = time.perf_counter()
      for _ in range(steps):
        self.state, metrics = self.program.train_step(self.state, self.batch, setup.hooks)
      self.last_loss = float(metrics["loss"])  # waits for the last step
      return time.perf_counter() - start


# ----------------------------------------------------------------------------- transformers


class TorchLlamaTrainer:
  """LlamaForCausalLM (sdpa attention) with AdamW and clipping, float32, eager."""

  def __init__(self, *, batch: int, seq_len: int, threads: int, seed: int = 0, dtype: str = "float32"):
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import LlamaConfig, LlamaForCausalLM  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self._torch = torch
    config = LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seq_len,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu")
    config._attn_implementation = "sdpa"  # pylint: disable=protected-access
    self.model = LlamaForCausalLM(config).float().train()
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95),
                                       eps=1e-8, weight_decay=0.1)
    tokens = torch.randint(0, 256, (batch, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    self.inputs, self.targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    self.tokens_per_step = batch * seq_len
    self.last_loss = None
    self.bfloat16 = dtype == "bfloat16"

  def step(self):
    torch = self._torch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):  # float32 master weights
      logits = self.model(input_ids=self.inputs).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             self.targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      loss = self.step()
    self.last_loss = float(loss.detach())
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- reports


def best_tokens_per_second(trainer, steps: int, rounds_done: list[float]) -> float:
  seconds = trainer.run(steps)
  rounds_done.append(trainer.tokens_per_step * steps / seconds)
  return max(rounds_done)


def cpu_report(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  batch, seq_len = args.batch or 16, args.seq_len or 256
  print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; threads "
        f"per framework: {args.threads}; jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"torch {torch.__version__}")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"shape: vocab 256, width 256, 4 layers, 4 heads, SwiGLU 1024, RoPE, "
        f"seq {seq_len}, batch {batch}, {args.dtype} (rope_lab cpu_matmul={args.cpu_matmul}), AdamW + clipping")
  trainers = {}
  if args.which in ("both", "jax"):
    trainers["rope_lab"] = RopeLabTrainer(rope_lab_experiment(
        encoding="rope", attention=args.attention, batch=batch, seq_len=seq_len,
        model={"compute_dtype": args.dtype, "cpu_matmul": args.cpu_matmul}))
  if args.which in ("both", "torch"):
    trainers["transformers"] = TorchLlamaTrainer(batch=batch, seq_len=seq_len, threads=args.threads,
                                                 dtype=args.dtype)
  for trainer in trainers.values():
    trainer.run(args.warmup)  # compiles (JAX) / warms the allocator (PyTorch)
  rates = {name: [] for name in trainers}
  for _ in range(args.rounds):
    for name, trainer in trainers.items():
      best_tokens_per_second(trainer, args.steps, rates[name])
  for name, values in rates.items():
    print(f"{name:13s} {max(values):10,.0f} tokens/s  (rounds: "
          f"{', '.join(f'{v:,.0f}' for v in values)}; last loss {trainers[name].last_loss:.3f})")
  if len(rates) == 2:
    ratio = max(rates["rope_lab"]) / max(rates["transformers"])
    print(f"ratio rope_lab / transformers: {ratio:.2f}x")
  encoding_costs(args, batch, seq_len)
  print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def encoding_costs(args, batch: int, seq_len: int) -> None:
  names = [n for n in args.encodings.split(",") if n]
  if len(names) < 2:
    return
  trainers = {n: RopeLabTrainer(rope_lab_experiment(encoding=n, attention=args.attention,
                                                    batch=batch, seq_len=seq_len)) for n in names}
  for trainer in trainers.values():
    trainer.run(args.warmup)
  seconds = {n: [] for n in names}
  for _ in range(args.rounds):
    for name, trainer in trainers.items():
      seconds[name].append(trainer.run(args.steps) / args.steps)
  base = min(seconds[names[0]])
  for name in names:
    step = min(seconds[name])
    print(f"encoding {name:6s} {1000 * step:8.1f} ms/step  {100 * (step / base - 1):+6.1f}% vs {names[0]}")


def model_flops_per_token(exp) -> float:
  m = exp.model
  per_layer = (2 * m.n_heads + 2 * m.n_kv_heads) * m.head_dim * m.d_model + 3 * m.d_model * m.mlp_dim
  dense = m.n_layers * per_layer + m.d_model * m.vocab_size  # lm_head; the embedding is a lookup
  attention = 12 * m.n_layers * m.n_heads * m.head_dim * exp.train.seq_len
  return 6 * dense + attention


def gpu_report(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from configs import gpu_125m  # pylint: disable=g-import-not-at-top
  from rope_lab import config as config_lib  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  config = gpu_125m.get_config()
  config.update(global_batch_size=args.batch or 16, seq_len=args.seq_len or 2048,
                mesh_shape=(-1, 1, 1))
  config.model.attention = args.attention
  exp = config_lib.experiment_from_config_dict(config)
  peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
      (v for k, v in PEAK_BF16_FLOPS.items() if k in device.device_kind), None)
  print(f"device: {device.device_kind} x{jax.device_count()}; jax {jax.__version__}")
  trainer = RopeLabTrainer(exp)
  trainer.run(args.warmup)
  best = max(trainer.tokens_per_step * args.steps / trainer.run(args.steps)
             for _ in range(args.rounds))
  flops = model_flops_per_token(exp) * best
  print(f"configs/gpu_125m.py: batch {exp.train.global_batch_size} x {exp.train.seq_len}, "
        f"{exp.model.compute_dtype}, attention {exp.model.attention}: {best:,.0f} tokens/s, "
        f"{flops / 1e12:.1f} TFLOP/s" + (f", MFU {100 * flops / peak / jax.device_count():.1f}%"
                                         if peak else " (unknown peak: pass --peak_tflops)"))
  names = [n for n in args.encodings.split(",") if n]
  if len(names) >= 2:
    args.rounds = max(args.rounds, 2)
    costs = {}
    for name in names:
      config.pe = config_lib.pe_config_dict(name, **({"factor": 4.0, "original_max_position_embeddings": 512}
                                                      if name == "yarn" else {}))
      t = RopeLabTrainer(config_lib.experiment_from_config_dict(config))
      t.run(args.warmup)
      costs[name] = min(t.run(args.steps) / args.steps for _ in range(args.rounds))
    for name in names:
      print(f"encoding {name:6s} {1000 * costs[name]:8.1f} ms/step  "
            f"{100 * (costs[name] / costs[names[0]] - 1):+6.1f}% vs {names[0]}")


def main(argv=None):
  args = parse_args(argv)
  if args.device == "cpu":
    flags = CPU_XLA_FLAGS if args.xla_flags is None else args.xla_flags
    if args.threads == 1:  # XLA's CPU client otherwise runs its thread pool on every core
      flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if args.device == "cpu":
    cpu_report(args)
  else:
    gpu_report(args)


if __name__ == "__main__":
  main(sys.argv[1:])
