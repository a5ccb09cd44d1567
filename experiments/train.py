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

import sys

from absl import app, flags
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


def initialize_distributed() -> None:
  """Joins a multi-process run (before JAX touches any device); no-op for one process."""
  from rope_lab.running import distributed  # pylint: disable=g-import-not-at-top
  from rope_lab.errors import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None


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
  from rope_lab.running import cli  # pylint: disable=g-import-not-at-top
  from rope_lab.config import experiment_from_config_dict  # pylint: disable=g-import-not-at-top
  workdir = cli.absolute_path(_WORKDIR.value)
  config = _CONFIG.value
  if config.get("init_from"):
    with config.unlocked():
      config.init_from = cli.absolute_path(config.init_from)
  exp = experiment_from_config_dict(config)
  initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from rope_lab.training import loop as train  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    cli.log_to_file(workdir)
  result = train.run(exp, workdir)
  cli.say(f"{result.status} at step {result.step}: {workdir}")
  if result.status == "preempted":
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  from rope_lab.running import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.run(main, flags_parser=parse_flags,
           resume_hint="run the same command again to resume from the last checkpoint")
