"""Search LongRoPE rescale factors for a trained RoPE run, zero-shot, on validation documents.

  python -m experiments.longrope_search --config=configs/longrope_search.py \
      --config.base_workdir=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/longrope_s8

--workdir then holds longrope_factors.json (the factor file), longrope_encoding.json (the
same as an encoding spec for ``experiments.evaluate --encoding``), results.jsonl (one row
per generation and stage), figures/ and one resumable subdirectory per stage (stage1/,
long/, short/). Ctrl-C or SIGTERM stops cleanly; the same command resumes without
re-scoring any candidate. The procedure lives in rope_lab.search.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rope_lab import search

from rope_lab.running import distributed
from rope_lab.errors import RopeLabError

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/longrope_search.py[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Search directory: state, factors, results, figures.")
flags.mark_flags_as_required(["config", "workdir"])

INTERRUPTED_EXIT_CODE = 130


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  workdir = os.path.abspath(_WORKDIR.value)
  try:
    distributed.initialize()  # a multi-process job's peers, from the environment
    run = search.run_from_mapping(_CONFIG.value.to_dict())
    paths = {name: os.path.abspath(getattr(run, name)) for name in ("base_workdir", "seed_factor_file")
             if getattr(run, name)}
    with search.sigterm_as_keyboard_interrupt():
      search.run_longrope_search(dataclasses.replace(run, **paths), workdir,
                                 log=lambda message: print(message, flush=True))
  except (RopeLabError, FileNotFoundError) as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  except KeyboardInterrupt:
    sys.stderr.write(f"interrupted; run the same command again to resume from {workdir}\n")
    return INTERRUPTED_EXIT_CODE
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
