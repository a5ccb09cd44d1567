"""Fixtures shared by the test modules."""

import jax
import pytest

# An implicit broadcast between arrays of different rank is an error in every test: a
# [B, L] array meeting a [L] one by accident would otherwise give a silently wrong number.
jax.config.update("jax_numpy_rank_promotion", "raise")


def _without_optimizations():
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA's optimisation passes dominate tiny programs' cost; the numbers do not need them.

  Modules opt in with ``pytestmark = pytest.mark.usefixtures("fast_compiles")``.
  """
  yield from _without_optimizations()


@pytest.fixture
def fast_compiles_in_test():
  """``fast_compiles`` for one test (its module's other programs keep the optimisations)."""
  yield from _without_optimizations()


# Modules whose tests take the longest (tens of seconds to minutes each on 2 cores), in
# decreasing order. pytest.ini hands whole files to the xdist workers (--dist loadfile,
# so module fixtures such as a loaded model and jit caches are built once) in collection
# order; starting the longest files first lets the short ones fill in at the end, so the
# workers finish together instead of one waiting while the other runs a long file.
LONGEST_FIRST = (
    "test_real_model.py",
    "test_notebooks.py",
    "test_generate.py",
    "test_context_parallel.py",
    "test_zero_shot.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole, in order
