"""Fixtures shared by the test modules, and one compilation cache for the whole run."""

import atexit
import os
import shutil
import tempfile

import pytest

# One persistent compilation cache per pytest run, shared by the xdist workers and by the
# subprocesses the tests start (they inherit the environment): many files train, evaluate
# or start `experiments.*` on the same tiny configs, and XLA compiling the same program
# again dominates their cost. The directory is made empty by the process that starts the
# run (the only one without PYTEST_XDIST_WORKER) and removed when it exits, so nothing
# carries over between runs. Must be in the environment before JAX is imported; a
# JAX_COMPILATION_CACHE_DIR already set (empty: no cache) is left alone.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _run_cache = tempfile.mkdtemp(prefix="rope_lab_test_jax_cache_")
  atexit.register(shutil.rmtree, _run_cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _run_cache
  # Tiny test programs compile in well under JAX's default 1 s threshold; cache them all.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# One BLAS/OpenMP thread per process (torch, numpy's BLAS): the xdist workers already use
# every core, and two OpenMP threads per worker on a busy 2-core machine wait at each
# barrier for a descheduled peer (a transformers forward of SmolLM2 at 256 tokens took
# 7.5 s with two threads against 0.8 s with one). Inherited by workers and subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# XLA's optimisation passes (LLVM's above all) cost more than they save on the suite's tiny
# programs: compiling dominates most tests, and the numbers the tests check do not depend
# on the passes. Off for the whole run, workers and subprocesses alike (they inherit the
# environment); a module whose programs run long opts back in with ``optimized_compiles``.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# XLA:CPU's MLIR fusion emitters (its default) compile the suite's programs far more slowly
# than its older emitters: the whole suite took 696 s of test time with them and 503 s
# without, on 2 cores, and the 30-layer real-model forward ran no slower. Code generation
# only; the tests' numbers are checked against references with tolerances either way.
_NO_FUSION_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
if _NO_FUSION_EMITTERS.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _NO_FUSION_EMITTERS).strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# An implicit broadcast between arrays of different rank is an error in every test: a
# [B, L] array meeting a [L] one by accident would otherwise give a silently wrong number.
jax.config.update("jax_numpy_rank_promotion", "raise")


def _optimizations_disabled(disabled: bool):
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", disabled)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def optimized_compiles():
  """XLA's optimisations back on for a module whose programs run long enough to repay them
  (a 30-layer model's forward pass over a thousand tokens)."""
  yield from _optimizations_disabled(False)


# Modules whose tests take the longest (tens of seconds to minutes each on 2 cores), in
# decreasing order. pytest.ini hands whole files to the xdist workers (--dist loadfile,
# so module fixtures such as a loaded model and jit caches are built once) in collection
# order; starting the longest files first lets the short ones fill in at the end, so the
# workers finish together instead of one waiting while the other runs a long file.
LONGEST_FIRST = (
    "test_real_model.py",
    "test_entry_points.py",
    "test_context_parallel.py",
    "test_notebooks.py",
    "test_train.py",
    "test_generate.py",
    "test_sweep.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole, in order
