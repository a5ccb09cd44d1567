"""LongRoPE search scoring: one candidate per call vs the whole population in one call.

  python -m benchmarks.longrope_search                       # tiny shape, random init, 1024 tokens
  python -m benchmarks.longrope_search --workdir=/tmp/rope_lab/tiny   # a trained tiny run
  python -m benchmarks.longrope_search --device=gpu --documents=random --population=64 \
      --candidates_per_call=16,64

Both ways score the same population (PI, NTK-aware and YaRN seeds plus random monotone
mutants, as the search's generation 0 makes them) on the same model, validation
documents and window length, in one process:

* one at a time: each candidate becomes a LongRoPE encoding whose hooks go through
  ``rope_lab.evaluate.window_nll`` (one call, and one host sync, per candidate; one
  compilation, since the hooks are traced arguments);
* batched: ``rope_lab.search.scoring.make_population_scorer``, ``candidates_per_call``
  candidates per call under ``jax.vmap`` (the last chunk padded), for each value given.

The first pass of each includes compilation and is reported apart; the steady state is
the best of ``--repeats`` passes, alternating the two ways so both see the same background
load. The perplexities must agree to 1e-5 relative (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

MODEL = dict(vocab_size=258, d_model=128, n_layers=4, n_heads=4, mlp_dim=512)  # configs/tiny_cpu.py
TOLERANCE = 1e-5


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=None, help="trained run (config.json + checkpoints); "
                      "default: random weights of the tiny shape")
  parser.add_argument("--length", type=int, default=1024, help="window length (tokens)")
  parser.add_argument("--original_length", type=int, default=128,
                      help="training length L_orig (a --workdir's own length wins)")
  parser.add_argument("--docs", type=int, default=2, help="documents, one window each")
  parser.add_argument("--documents", choices=("validation", "random"), default="validation",
                      help="the run's (or the default dataset's) validation documents, or random bytes "
                      "(for a machine without the prepared dataset)")
  parser.add_argument("--population", type=int, default=16)
  parser.add_argument("--candidates_per_call", default="1,4,16",
                      help="comma-separated chunk sizes of the batched scorer, each measured")
  parser.add_argument("--chunk_size", type=int, default=128, help="attention block length")
  parser.add_argument("--repeats", type=int, default=2, help="steady-state passes of each way")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--seed", type=int, default=0, help="seed of the random population and weights")
  return parser.parse_args(argv)


def load_model(args):
  """(model config, params, RoPE encoding, data config, training length)."""
  import jax  # pylint: disable=g-import-not-at-top
  from rope_lab import pe  # pylint: disable=g-import-not-at-top
  from rope_lab.data import DataConfig  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import load_run  # pylint: disable=g-import-not-at-top
  from rope_lab.model.skeleton import ModelConfig, init_params  # pylint: disable=g-import-not-at-top
  if args.workdir:
    run = load_run(args.workdir)
    return run.model, run.params, run.encoding, run.exp.data, run.train_length
  cfg = ModelConfig(**MODEL, attention="dot_product")
  encoding = pe.make("rope")
  hooks = encoding.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=16)
  return cfg, init_params(cfg, hooks, jax.random.key(args.seed)), encoding, DataConfig(), args.original_length


def make_population(space, target_factor: float, original_length: int, size: int, seed: int):
  """(factors [N, P], n_hat [N]): the search's own generation 0 for this space."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rope_lab.search.config import SearchConfig  # pylint: disable=g-import-not-at-top
  from rope_lab.search.evolution import initial_population  # pylint: disable=g-import-not-at-top
  from rope_lab.search.seeds import seed_candidates  # pylint: disable=g-import-not-at-top
  cfg = SearchConfig(target_factor=target_factor, rotary_pairs=space.pairs, original_length=original_length,
                     rope_base=space.base, population=size, top_k=min(size, 2), seed=seed)
  population = initial_population(cfg, seed_candidates(cfg), np.random.default_rng(seed))
  return np.stack([cfg.factors_of(c.steps) for c in population]), np.asarray([c.n_hat for c in population])


def benchmark_windows(args, data):
  """One window of args.length tokens per document."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rope_lab.data import LongDocument, get_tokenizer, long_documents  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import document_windows  # pylint: disable=g-import-not-at-top
  if args.documents == "random":
    rng = np.random.default_rng(args.seed)
    docs = [LongDocument(f"random-{i}", rng.integers(0, 256, args.length).astype(np.int32), args.length)
            for i in range(args.docs)]
    return document_windows(docs, args.length, args.length, pad_id=0)
  tokenizer = get_tokenizer(data)
  docs = long_documents(data, split="validation", min_tokens=args.length, max_docs=args.docs,
                        max_tokens=args.length, tokenizer=tokenizer)
  return document_windows(docs, args.length, args.length, tokenizer.pad_id)


def timed(fn):
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cuda" if args.device == "gpu" else "cpu")
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rope_lab.search import scoring  # pylint: disable=g-import-not-at-top

  model, params, encoding, data, original = load_model(args)
  space = scoring.rotary_space(encoding, model.head_dim)
  target_factor = args.length / original
  windows = benchmark_windows(args, data)
  factors, n_hat = make_population(space, target_factor, original, args.population, args.seed)
  per_call = [int(n) for n in args.candidates_per_call.split(",")]
  attention_factor = scoring.attention_factor_for(target_factor, original)
  scorers = {n: scoring.make_population_scorer(model, params, windows, space, scoring.ScoringSetup(
      length=args.length, attention_factor=attention_factor, candidates_per_call=n, chunk_size=args.chunk_size))
             for n in per_call}
  ways = {"one at a time": lambda: scoring.one_at_a_time_perplexities(
      model, params, windows, space, factors, n_hat, original_length=original,
      target_factor=target_factor, chunk_size=args.chunk_size)}
  ways.update({f"batched, {n} per call": (lambda scorer=scorer: scorer(factors, n_hat))
               for n, scorer in scorers.items()})

  print(f"device: {jax.devices()[0].platform} x {jax.device_count()} ({jax.devices()[0].device_kind}); "
        f"{os.cpu_count()} cpus visible")
  print(f"model: {'trained ' + args.workdir if args.workdir else 'random init'} d={model.d_model} "
        f"layers={model.n_layers} heads={model.n_heads}; L_orig={original}, window={args.length} "
        f"(s={target_factor:g}), {len(windows)} {args.documents} windows, "
        f"{scorers[per_call[0]].batches.tokens} scored tokens")
  print(f"population: {len(factors)} candidates; attention chunk {args.chunk_size}")
  first = {name: timed(way) for name, way in ways.items()}  # includes compilation
  steady = {name: [] for name in ways}
  for _ in range(args.repeats):  # interleaved: every way sees the same background load
    for name, way in ways.items():
      steady[name].append(timed(way)[1])
  reference = first["one at a time"][0]
  worst = max(float(np.max(np.abs(value / reference - 1))) for value, _ in first.values())
  baseline = min(steady["one at a time"])
  n = len(factors)
  for name in ways:
    best = min(steady[name])
    print(f"{name:22s} {n / best:9.2f} candidates/s  (best of {args.repeats}: {best:.3f} s; first pass "
          f"with compilation {first[name][1]:.2f} s)  speed-up {baseline / best:5.2f}x")
  print(f"perplexities: {np.round(reference[:4], 4).tolist()} ...; largest relative difference "
        f"{worst:.2e} (tolerance {TOLERANCE:g})")
  return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
  sys.exit(main())
