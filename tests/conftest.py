"""Fixtures shared by the test modules."""

import jax
import pytest

# An implicit broadcast between arrays of different rank is an error in every test: a
# [B, L] array meeting a [L] one by accident would otherwise give a silently wrong number.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA's optimisation passes dominate tiny programs' cost; the numbers do not need them.

  Modules opt in with ``pytestmark = pytest.mark.usefixtures("fast_compiles")``.
  """
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
