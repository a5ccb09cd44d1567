"""Runs a sweep on this machine: one run after another or N at a time, resumable.

Each run is its own subprocess (the exact command ``--launcher=print`` shows), so a run
that crashes does not take the sweep with it, and a run can itself be several processes
(``processes_per_run``: JAX's coordinator on localhost, as on a multi-host cluster).

Rows: each finished run adds its row (its point, final training metrics and time) to the
sweep's results.jsonl, preceded by the rows the run wrote to its own results.jsonl (an
evaluation run's measurements, configs/evaluate.py), so a sweep's rows are in one file.

Resuming: a run is finished when the sweep's results.jsonl holds its row; finished runs
are skipped. Any other run is started again with the same command, and the trainer
resumes it from the newest checkpoint in its directory (so an interrupted run loses at
most ``checkpoint_every`` steps). Ctrl-C or SIGTERM stops the running runs with SIGTERM,
which makes the trainer save a checkpoint first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from rope_lab import results as results_lib
from rope_lab.sweep.runs import CONFIG_PREFIX, Run

RESULTS_FILE = "results.jsonl"
LOG_DIR = "logs"  # <sweep dir>/logs/<run name>.log: each run's stdout and stderr
ROW_KIND = "sweep_run"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_metrics(workdir: str) -> dict[str, Any]:
  """The last training and validation numbers of a run's metrics.jsonl ({} if it has none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  metrics: dict[str, Any] = {}
  for row in results_lib.read_rows(path):
    prefix = "train" if row.get("split") == "train" else "eval"
    metrics["steps"] = max(metrics.get("steps", 0), int(row.get("step", 0)))
    if "loss" in row:
      metrics[f"{prefix}_loss"] = row["loss"]
  return metrics


def result_row(run: Run, seconds: float, commit: str) -> dict[str, Any]:
  """The run's row of the sweep's results.jsonl: its point, final metrics and time."""
  values = run.values
  seed = values.get(f"{CONFIG_PREFIX}seed")
  return results_lib.make_row(
      ROW_KIND, run.name, metrics={**run_metrics(run.workdir), "seconds": round(seconds, 1)},
      seed=seed if isinstance(seed, int) else None,
      config_hash=results_lib.config_hash({"config": run.config_flag, "overrides": run.overrides}),
      commit=commit, run=run.name, point={k: v for k, v in values.items()},
      command=run.argv(), workdir=run.workdir)


@dataclasses.dataclass
class _Active:
  run: Run
  index: int
  processes: list[subprocess.Popen]
  log_file: Any
  started: float


def _start(run: Run, index: int, sweep_dir: str, python: str, processes_per_run: int,
           env: dict[str, str] | None, cwd: str | None) -> _Active:
  log_path = os.path.join(sweep_dir, LOG_DIR, f"{run.name}.log")
  log_file = open(log_path, "a", encoding="utf-8")
  log_file.write(f"$ {' '.join(run.argv(python))}\n")
  log_file.flush()
  commands = [run.argv(python)]
  if processes_per_run > 1:
    port = _free_port()
    commands = [run.argv(python) + [f"--coordinator_address=localhost:{port}",
                                    f"--num_processes={processes_per_run}", f"--process_id={i}"]
                for i in range(processes_per_run)]
  processes = [subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd)
               for command in commands]
  return _Active(run, index, processes, log_file, time.time())


def run_local(runs: Sequence[Run], sweep_dir: str, *, parallel: int = 1,
              processes_per_run: int = 1, python: str = "python",
              env: dict[str, str] | None = None, cwd: str | None = None,
              log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[str]]:
  """Runs every unfinished run; returns the sweep's rows (earlier ones included) and the
  names of the runs that failed this time (the others still ran). The commands run in
  ``cwd`` (default: the current directory), which must be the repository root."""
  if parallel < 1 or processes_per_run < 1:
    raise ValueError(f"parallel and processes_per_run must be >= 1, got {parallel}, "
                     f"{processes_per_run}")
  os.makedirs(os.path.join(sweep_dir, LOG_DIR), exist_ok=True)
  results = results_lib.ResultsFile(os.path.join(sweep_dir, RESULTS_FILE))
  with open(os.path.join(sweep_dir, "sweep.json"), "w", encoding="utf-8") as f:
    json.dump([{"name": r.name, "command": r.argv()} for r in runs], f, indent=1)
  finished = {row["key"] for row in results.read() if row.get("kind") == ROW_KIND}
  commit = results_lib.git_commit()
  total, pending, active, failed = len(runs), [], [], []
  for index, run in enumerate(runs, 1):
    if run.name in finished:
      log(f"[{index}/{total}] {run.name}: finished earlier, skipped")
    else:
      pending.append((index, run))

  def stop_all(signum, frame):  # SIGTERM the runs: the trainer checkpoints and exits
    del frame
    for item in active:
      for process in item.processes:
        if process.poll() is None:
          process.send_signal(signal.SIGTERM)
    raise KeyboardInterrupt(f"signal {signum}")

  previous = signal.signal(signal.SIGTERM, stop_all)
  try:
    while pending or active:
      while pending and len(active) < parallel:
        index, run = pending.pop(0)
        state = "resuming" if os.path.isdir(os.path.join(run.workdir, "checkpoints")) else "starting"
        log(f"[{index}/{total}] {run.name}: {state}")
        active.append(_start(run, index, sweep_dir, python, processes_per_run, env, cwd))
      time.sleep(0.2)
      for item in [a for a in active if all(p.poll() is not None for p in a.processes)]:
        active.remove(item)
        item.log_file.close()
        seconds = time.time() - item.started
        codes = [p.returncode for p in item.processes]
        if any(codes):
          failed.append(item.run.name)
          log(f"[{item.index}/{total}] {item.run.name}: FAILED (exit {max(codes, key=abs)}) "
              f"after {seconds:.0f}s; log: {os.path.join(sweep_dir, LOG_DIR, item.run.name + '.log')}")
          continue
        row = result_row(item.run, seconds, commit)
        results.append([*results_lib.read_rows(os.path.join(item.run.workdir, RESULTS_FILE)), row])
        metrics = row["metrics"]
        losses = ", ".join(f"{k.replace('_', ' ')} {metrics[k]:.3f}"
                           for k in ("train_loss", "eval_loss") if k in metrics)
        log(f"[{item.index}/{total}] {item.run.name}: done in {seconds:.0f}s"
            + (f", {losses}" if losses else ""))
  except KeyboardInterrupt:
    for item in active:
      for process in item.processes:
        if process.poll() is None:
          process.send_signal(signal.SIGTERM)
      for process in item.processes:
        process.wait()
      item.log_file.close()
    log("stopped; run the same command again to resume")
    raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  names = {run.name for run in runs}
  rows = [row for row in results.read() if row.get("kind") == ROW_KIND and row["key"] in names]
  return rows, failed
