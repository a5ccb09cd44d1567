"""Fixtures shared by the test modules."""

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA's optimisation passes dominate tiny programs' cost; the numbers do not need them.

  Modules opt in with ``pytestmark = pytest.mark.usefixtures("fast_compiles")``.
  """
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
