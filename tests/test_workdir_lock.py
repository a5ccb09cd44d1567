"""One run per work directory: a live holder is named and refused, a dead one taken over."""

import os
import socket
import subprocess
import sys

import pytest

from rope_lab.training import loop as train
from rope_lab.errors import WorkdirError
from rope_lab.running.workdir import LOCK_FILE, WorkdirLock
from tests import train_helpers as th


def test_a_second_holder_is_refused_naming_pid_and_host(tmp_path):
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(WorkdirError) as refused:
      WorkdirLock(str(tmp_path)).acquire()
  message = str(refused.value)
  assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
  assert str(tmp_path) in message
  # Released: the next run takes it without a notice.
  notices = []
  with WorkdirLock(str(tmp_path), notice=notices.append):
    pass
  assert notices == []


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_notice(tmp_path):
  code = ("import os, sys; from rope_lab.running.workdir import WorkdirLock; "
          "WorkdirLock(sys.argv[1]).acquire(); print(os.getpid(), flush=True); os._exit(0)")
  dead = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=th.subprocess_env(),
                        capture_output=True, text=True, timeout=60, check=True)
  dead_pid = int(dead.stdout.split()[0])
  assert str(dead_pid) in (tmp_path / LOCK_FILE).read_text()  # it died holding the lock
  notices = []
  with WorkdirLock(str(tmp_path), notice=notices.append):
    assert str(os.getpid()) in (tmp_path / LOCK_FILE).read_text()
  assert len(notices) == 1 and "stale lock" in notices[0] and f"pid {dead_pid}" in notices[0]


def test_training_on_a_locked_workdir_refuses_before_writing_anything(tmp_path):
  workdir = tmp_path / "run"
  with WorkdirLock(str(workdir)):
    # In process: the library refuses ...
    with pytest.raises(WorkdirError, match=f"pid {os.getpid()}"):
      train.run(th.tiny_experiment(), str(workdir))
    # ... and so does the command line, at once, with the one exit convention.
    completed = subprocess.run(
        [th.PYTHON, "-m", "experiments.train", "--config=tests/tiny_config.py", f"--workdir={workdir}"],
        cwd=th.REPO_ROOT, env=th.subprocess_env(), capture_output=True, text=True, timeout=120)
  assert completed.returncode == 2
  assert f"error: work directory {workdir} is in use by pid {os.getpid()}" in completed.stderr
  assert sorted(os.listdir(workdir)) == [LOCK_FILE, "log.txt"]  # no config, no checkpoints
