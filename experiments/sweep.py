"""Expand a config file's sweep into runs and start them: locally, or on TPU pods and GPU clusters.

  python -m experiments.sweep --config=configs/tiny_cpu.py:smoke,sweep=seeds \
      --workdir=/tmp/rope_lab/seeds --launcher=local [--parallel=2]

Launchers:
  local       runs here, --parallel at a time (--processes_per_run=N: each run as N JAX
              processes); resumable: the same command skips finished runs and resumes the
              rest from their checkpoints. Rows go to <workdir>/results.jsonl; the summary
              table (summary.md) and loss figure (sweep.png) are written at the end.
  print       the exact command of every run; nothing runs.
  xpk         one `xpk workload create` per run on a GKE TPU/GPU cluster (--cluster,
              --tpu_type or --device_type, --num_slices/--num_nodes, --docker_image,
              gs:// --workdir); printed unless --execute.
  gcloud_tpu  one `gcloud compute tpus tpu-vm ssh --worker=all` per run on a TPU VM slice
              (--tpu_name, --zone, gs:// --workdir); printed unless --execute.

Every point is checked (unknown field, rejected value, two points in one directory)
before anything runs or is submitted.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file with get_sweep: configs/<name>.py[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory; each run writes <workdir>/<run name>.")
_SET = flags.DEFINE_multi_string(
    "set", [], "config.<field>=<value> for every run (not swept, not in run names), "
    "e.g. --set=config.init_from=/tmp/rope_lab/tiny.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "print", "xpk", "gcloud_tpu"],
                              "Where the runs go.")
_EXECUTE = flags.DEFINE_bool("execute", False, "xpk/gcloud_tpu: run the commands (default: print them).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "local: runs at a time.")
_PROCESSES = flags.DEFINE_integer("processes_per_run", 1, "local: JAX processes per run.")
_CLUSTER = flags.DEFINE_string("cluster", None, "xpk: GKE cluster name.")
_TPU_TYPE = flags.DEFINE_string("tpu_type", None, "xpk: TPU slice type, e.g. v5litepod-16.")
_DEVICE_TYPE = flags.DEFINE_string("device_type", None, "xpk: GPU node type, e.g. h100-80gb-8.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "xpk: TPU slices per run.")
_NUM_NODES = flags.DEFINE_integer("num_nodes", 1, "xpk: GPU nodes per run.")
_IMAGE = flags.DEFINE_string("docker_image", None, "xpk: image with rope_lab installed.")
_PREFIX = flags.DEFINE_string("workload_prefix", "ropelab", "xpk: workload name prefix.")
_TPU_NAME = flags.DEFINE_string("tpu_name", None, "gcloud_tpu: TPU VM (queued resource) name.")
_ZONE = flags.DEFINE_string("zone", None, "xpk/gcloud_tpu: zone.")
_PROJECT = flags.DEFINE_string("project", None, "xpk/gcloud_tpu: Google Cloud project.")
_REPO_DIR = flags.DEFINE_string("repo_dir", "rope_lab", "gcloud_tpu: repository on every worker.")
flags.mark_flags_as_required(["config", "workdir"])


def _launch(runs, workdir: str) -> int:
  from rope_lab.sweep import local, remote, summary  # pylint: disable=g-import-not-at-top
  launcher = _LAUNCHER.value
  if launcher == "print":
    for run in runs:
      print(shlex.join(run.argv()))
    return 0
  if launcher == "xpk":
    target = remote.XpkTarget(
        cluster=_CLUSTER.value, docker_image=_IMAGE.value, tpu_type=_TPU_TYPE.value,
        device_type=_DEVICE_TYPE.value, num_slices=_NUM_SLICES.value, num_nodes=_NUM_NODES.value,
        project=_PROJECT.value, zone=_ZONE.value, workload_prefix=_PREFIX.value)
    remote.submit(remote.xpk_commands(runs, target), launcher, execute=_EXECUTE.value)
    return 0
  if launcher == "gcloud_tpu":
    target = remote.TpuVmTarget(tpu_name=_TPU_NAME.value, zone=_ZONE.value,
                                project=_PROJECT.value, repo_dir=_REPO_DIR.value)
    remote.submit(remote.gcloud_tpu_commands(runs, target), launcher, execute=_EXECUTE.value)
    return 0
  rows, failed = local.run_local(runs, workdir, parallel=_PARALLEL.value,
                                 processes_per_run=_PROCESSES.value, python=sys.executable,
                                 log=lambda line: print(line, flush=True))
  text = summary.table(rows)
  with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  print(text)
  plot = summary.figure(rows, os.path.join(workdir, "sweep.png"))
  print(f"{len(rows)} rows in {os.path.join(workdir, local.RESULTS_FILE)}"
        + (f"; figure {plot}" if plot else ""))
  if failed:
    print(f"{len(failed)} run(s) failed: {', '.join(failed)}; logs in "
          f"{os.path.join(workdir, local.LOG_DIR)}; the same command retries them", file=sys.stderr)
    return 1
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rope_lab.errors import RopeLabError  # pylint: disable=g-import-not-at-top
  from rope_lab.sweep import runs as runs_lib  # pylint: disable=g-import-not-at-top
  workdir = _WORKDIR.value
  try:
    if _LAUNCHER.value == "local":
      if "://" in workdir:
        raise runs_lib.ConfigError(f"--workdir={workdir!r}: the local launcher writes a local "
                                   f"directory; bucket directories are for xpk and gcloud_tpu")
      workdir = os.path.abspath(workdir)
    runs = runs_lib.expand(_CONFIG.value, workdir, fixed=runs_lib.parse_settings(_SET.value))
    return _launch(runs, workdir)
  except RopeLabError as e:
    print(f"sweep error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the runs saved checkpoints and stopped
    return 128 + 15


if __name__ == "__main__":
  app.run(main)
