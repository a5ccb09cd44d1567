"""Multi-process start-up: what each setting means before JAX is asked to join anything."""

import pytest

from rope_lab.running import distributed
from rope_lab.errors import ConfigError

_CLUSTER_VARIABLES = ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
                      "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@pytest.fixture
def calls(monkeypatch):
  """Records jax.distributed.initialize's arguments instead of joining a cluster."""
  import jax  # pylint: disable=g-import-not-at-top
  for name in _CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  made = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args: made.append(args))
  monkeypatch.setattr(jax.config, "update", lambda *args: None)
  return made


def test_one_process_joins_nothing(calls):
  distributed.initialize()
  assert calls == [] and not distributed.cluster_detected()


@pytest.mark.parametrize("name, value", [("TPU_WORKER_HOSTNAMES", "a,b"), ("SLURM_NTASKS", "4"),
                                         ("OMPI_COMM_WORLD_SIZE", "2")])
def test_a_detected_cluster_lets_jax_find_its_peers(calls, monkeypatch, name, value):
  monkeypatch.setenv(name, value)
  distributed.initialize()
  assert calls == [()]


def test_flags_win_over_the_environment_and_a_lone_address_is_an_error(calls, monkeypatch):
  monkeypatch.setenv("JAX_NUM_PROCESSES", "8")
  monkeypatch.setenv("JAX_PROCESS_ID", "5")
  distributed.initialize("host:1234", num_processes=2)
  assert calls == [("host:1234", 2, 5)]
  monkeypatch.delenv("JAX_PROCESS_ID")
  with pytest.raises(ConfigError, match="needs --num_processes and --process_id"):
    distributed.initialize("host:1234", num_processes=2)
