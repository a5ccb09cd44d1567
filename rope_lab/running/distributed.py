"""Joining a multi-process run: the start-up every entry point (train, study, search) shares.

On a TPU slice, and under SLURM or Open MPI, JAX finds its peers by itself. Elsewhere every
process is told the coordinator's address, the number of processes and its own index, by
flags or by the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (how launchers pass them). Call :func:`initialize` before JAX touches any
device; for a single process it does nothing.
"""

from __future__ import annotations

import os

from rope_lab.errors import ConfigError


def cluster_detected() -> bool:
  """A multi-host TPU slice, or a SLURM / Open MPI job of several tasks: JAX finds its peers."""
  return ("," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
          or int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def _given_or_env(value, name: str, kind=str):
  """``value`` when given, else the environment variable ``name``."""
  if value is not None:
    return value
  found = os.environ.get(name)
  return None if found is None else kind(found)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins a multi-process run (before JAX touches any device); a no-op for one process."""
  import jax  # pylint: disable=g-import-not-at-top  (imported late: flags first, then devices)
  coordinator = _given_or_env(coordinator_address, "JAX_COORDINATOR_ADDRESS")
  if coordinator is not None:
    count = _given_or_env(num_processes, "JAX_NUM_PROCESSES", int)
    index = _given_or_env(process_id, "JAX_PROCESS_ID", int)
    if count is None or index is None:
      raise ConfigError("a coordinator address needs --num_processes and --process_id "
                        "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    # CPU processes need a collectives backend to talk to each other; GPUs use NCCL.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, count, index)
  elif cluster_detected():
    jax.distributed.initialize()
