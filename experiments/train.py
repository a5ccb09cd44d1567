"""Train one experiment from a config file.

  python -m experiments.train --config=configs/tiny_cpu.py[:key=value,...] \
      [--config.<field>=<value> ...] --workdir=<dir>

The run resumes from the newest checkpoint in --workdir. Multi-process runs: on a TPU
slice (and under SLURM or Open MPI) JAX finds its peers by itself; elsewhere give every
process --coordinator_address=<host:port of process 0> --num_processes=N --process_id=i
(or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
A SIGTERM saves a checkpoint at the next step boundary and exits with status 143.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/<name>.py[:key=value,...]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a multi-process run (not on TPU).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, N).")
flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT_CODE = 128 + 15  # what a shell reports for a process ended by SIGTERM


def _cluster_detected() -> bool:
  """A multi-host TPU slice, or a SLURM / Open MPI job of several tasks: JAX finds its peers."""
  return ("," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
          or int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def _flag_or_env(flag, name: str, kind=str):
  """A flag's value, else the environment variable ``name`` (how launchers pass them)."""
  if flag.value is not None:
    return flag.value
  value = os.environ.get(name)
  return None if value is None else kind(value)


def initialize_distributed() -> None:
  """Joins a multi-process run (before JAX touches any device); no-op for one process."""
  import jax  # pylint: disable=g-import-not-at-top
  coordinator = _flag_or_env(_COORDINATOR, "JAX_COORDINATOR_ADDRESS")
  if coordinator is not None:
    count = _flag_or_env(_NUM_PROCESSES, "JAX_NUM_PROCESSES", int)
    index = _flag_or_env(_PROCESS_ID, "JAX_PROCESS_ID", int)
    if count is None or index is None:
      raise app.UsageError("a coordinator address needs --num_processes and --process_id "
                           "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    # CPU processes need a collectives backend to talk to each other; GPUs use NCCL.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, count, index)
  elif _cluster_detected():
    jax.distributed.initialize()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with an unknown --config.<field> reported as a config error.

  ml_collections raises AttributeError/KeyError (with a did-you-mean hint) for a field
  the locked config does not have; a wrong type is a flags.Error that absl reports.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
    sys.exit(1)
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(msg))
      e = e.args[0]
    detail = str(e.args[0] if e.args else e).replace("\n", "; ")
    sys.stderr.write(f"config error: unknown field on the command line: {detail}\n")
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # Orbax logs every file it writes at INFO; the loop reports progress itself.
    logging.set_verbosity(logging.WARNING)
  from rope_lab.config import ConfigError, experiment_from_config_dict  # pylint: disable=g-import-not-at-top
  try:
    exp = experiment_from_config_dict(_CONFIG.value)
  except ConfigError as e:
    sys.stderr.write(f"config error: {e}\n")
    sys.exit(2)
  initialize_distributed()
  from rope_lab import train  # pylint: disable=g-import-not-at-top
  try:
    result = train.run(exp, _WORKDIR.value)
  except ConfigError as e:
    sys.stderr.write(f"config error: {e}\n")
    sys.exit(2)
  logging.info("finished: %s", result)
  if result.status == "preempted":
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
