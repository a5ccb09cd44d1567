"""Commands that start a sweep's runs elsewhere: ``xpk`` workloads on GKE, ``gcloud`` on TPU VMs.

Both build the exact argument lists first (printed as a dry run, the default) and only
with ``execute`` call the tool, once per run, after checking the tool is on PATH. The
runs write to a shared bucket directory (``gs://...``): every host of a multi-host run
writes checkpoints to the same place, and a later sweep or a notebook reads them there.

On a multi-host TPU slice every worker runs the same command; experiments/train.py calls
``jax.distributed.initialize()`` when it sees several TPU workers, so nothing else is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence

from rope_lab.errors import ConfigError
from rope_lab.sweep.runs import Run

REMOTE_PYTHON = "python3"  # the interpreter on a TPU VM or in the docker image
# xpk's workload names: lowercase letters, digits and '-', starting with a letter, < 40 chars.
WORKLOAD_NAME_LENGTH = 39


class LauncherError(ConfigError):
  """A launcher cannot start: its tool is missing, or a flag it needs is absent or invalid."""


def require_bucket(workdir: str, launcher: str) -> None:
  if not workdir.startswith("gs://"):
    raise LauncherError(f"--workdir={workdir!r}: the {launcher} launcher needs a bucket "
                        f"directory (gs://BUCKET/...) that every host can write")


def require_tool(tool: str, launcher: str) -> str:
  path = shutil.which(tool)
  if path is None:
    raise LauncherError(f"--launcher={launcher} --execute needs {tool!r} on PATH; install it "
                        f"or drop --execute to print the commands")
  return path


def workload_name(prefix: str, run: Run) -> str:
  """A valid, stable xpk workload name for ``run``: ``<prefix>-<run name>``, shortened with
  a hash of the full name when too long."""
  full = f"{prefix}-{run.name}".lower()
  name = re.sub(r"[^a-z0-9-]+", "-", full).strip("-")
  if not name or not name[0].isalpha():
    name = "r-" + name
  if len(name) > WORKLOAD_NAME_LENGTH or name != full:
    digest = hashlib.sha256(full.encode()).hexdigest()[:6]
    name = f"{name[:WORKLOAD_NAME_LENGTH - 7].rstrip('-')}-{digest}"
  return name


@dataclasses.dataclass(frozen=True)
class XpkTarget:
  cluster: str
  docker_image: str
  tpu_type: str | None = None  # e.g. v5litepod-16
  device_type: str | None = None  # GPU clusters, e.g. h100-80gb-8
  num_slices: int = 1  # TPU slices per run (multislice)
  num_nodes: int = 1  # GPU nodes per run
  project: str | None = None
  zone: str | None = None
  workload_prefix: str = "ropelab"

  def __post_init__(self):
    if not self.cluster:
      raise LauncherError("--launcher=xpk needs --cluster (the GKE cluster xpk created)")
    if not self.docker_image:
      raise LauncherError("--launcher=xpk needs --docker_image (an image with rope_lab installed)")
    if (self.tpu_type is None) == (self.device_type is None):
      raise LauncherError("--launcher=xpk needs exactly one of --tpu_type (TPU) or "
                          "--device_type (GPU)")
    if self.num_slices < 1 or self.num_nodes < 1:
      raise LauncherError(f"--num_slices and --num_nodes must be >= 1, got "
                          f"{self.num_slices} and {self.num_nodes}")


def xpk_commands(runs: Sequence[Run], target: XpkTarget) -> list[list[str]]:
  """One ``xpk workload create`` per run."""
  commands = []
  for run in runs:
    require_bucket(run.workdir, "xpk")
    command = ["xpk", "workload", "create", f"--cluster={target.cluster}"]
    command += [f"--project={target.project}"] if target.project else []
    command += [f"--zone={target.zone}"] if target.zone else []
    command += [f"--workload={workload_name(target.workload_prefix, run)}"]
    if target.tpu_type:
      command += [f"--tpu-type={target.tpu_type}", f"--num-slices={target.num_slices}"]
    else:
      command += [f"--device-type={target.device_type}", f"--num-nodes={target.num_nodes}"]
    command += [f"--docker-image={target.docker_image}",
                f"--command={shlex.join(run.argv(REMOTE_PYTHON))}"]
    commands.append(command)
  return commands


@dataclasses.dataclass(frozen=True)
class TpuVmTarget:
  tpu_name: str
  zone: str
  project: str | None = None
  repo_dir: str = "rope_lab"  # the repository on every worker, relative to the ssh home

  def __post_init__(self):
    if not self.tpu_name or not self.zone:
      raise LauncherError("--launcher=gcloud_tpu needs --tpu_name and --zone")


def gcloud_tpu_commands(runs: Sequence[Run], target: TpuVmTarget) -> list[list[str]]:
  """One ``gcloud compute tpus tpu-vm ssh --worker=all`` per run (they run one after another)."""
  commands = []
  for run in runs:
    require_bucket(run.workdir, "gcloud_tpu")
    command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", target.tpu_name,
               f"--zone={target.zone}"]
    command += [f"--project={target.project}"] if target.project else []
    command += ["--worker=all",
                f"--command=cd {shlex.quote(target.repo_dir)} && {shlex.join(run.argv(REMOTE_PYTHON))}"]
    commands.append(command)
  return commands


def submit(commands: Sequence[list[str]], launcher: str, *, execute: bool,
           log: Callable[[str], None] = print) -> None:
  """Prints the commands, or (``execute``) runs them in order, stopping at the first failure."""
  if not execute:
    for command in commands:
      log(shlex.join(command))
    return
  tools = {command[0] for command in commands}
  for tool in sorted(tools):
    require_tool(tool, launcher)
  for index, command in enumerate(commands, 1):
    log(f"[{index}/{len(commands)}] {shlex.join(command)}")
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
      raise LauncherError(f"{command[0]} exited with status {completed.returncode} on command "
                          f"{index} of {len(commands)}; the {index - 1} before it were started")
