"""One run per work directory: a lock file naming its holder.

``<workdir>/.lock`` is held with ``fcntl.flock`` while a run uses the directory, and holds
the holder's pid, host and command line. The kernel releases a flock when its process
dies, however it dies, so a lock left behind by a killed run is never mistaken for a live
one: the next run takes it and says whose lock it took over. A second run while the first
is alive refuses at once with :class:`WorkdirError` naming the holder's pid and host.

Multi-host runs: only process 0 takes the lock, and its verdict is broadcast to every
process before any of them touches the directory. Process 0 is the one that writes the
run's files (config, metrics, logs), and the processes of one run share its checkpoints,
so one lock per run is what protects them; a lock per process would also let the other
processes of a *second* launch start and then hang at their first collective when their
process 0 refuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator

from rope_lab.errors import WorkdirError

LOCK_FILE = ".lock"


def _describe(holder: dict) -> str:
  started = holder.get("started")
  when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
          f"(started {when}: {holder.get('command', '?')})")


def _read_holder(handle) -> dict:
  handle.seek(0)
  text = handle.read()
  if not text.strip():
    return {}
  try:
    holder = json.loads(text)
  except json.JSONDecodeError:
    return {"pid": "?", "host": "?", "command": f"unreadable lock file: {text[:80]!r}"}
  return holder if isinstance(holder, dict) else {}


class WorkdirLock:
  """The held lock of one work directory; release() (or the context manager) frees it."""

  def __init__(self, workdir: str, *, notice: Callable[[str], None] | None = None):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._notice = notice or (lambda message: print(message, file=sys.stderr, flush=True))
    self._handle = None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(self.workdir, exist_ok=True)
    handle = open(self.path, "a+", encoding="utf-8")  # never truncates another's record
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(handle)
      handle.close()
      raise WorkdirError(
          f"work directory {self.workdir} is in use by {_describe(holder)}; wait for that run "
          f"to finish or stop it, or choose another --workdir") from None
    previous = _read_holder(handle)
    if previous:
      # A released lock is emptied, so a record here belongs to a process that died
      # holding it (the kernel dropped its flock).
      self._notice(f"taking over the stale lock of {self.workdir} left by {_describe(previous)}; "
                   f"that process is gone")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.time(), "command": " ".join(sys.argv)}))
    handle.flush()
    self._handle = handle
    return self

  def release(self) -> None:
    if self._handle is None:
      return
    self._handle.seek(0)
    self._handle.truncate()  # an empty file is a lock nobody holds
    self._handle.flush()
    fcntl.flock(self._handle, fcntl.LOCK_UN)
    self._handle.close()
    self._handle = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def locked(workdir: str, *, notice: Callable[[str], None] | None = None) -> Iterator[None]:
  """Holds ``workdir``'s lock for the block; in a multi-process JAX run only process 0
  takes it, and every process raises the same WorkdirError if it is refused."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    with WorkdirLock(workdir, notice=notice):
      yield
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  lock, refusal = None, ""
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir, notice=notice).acquire()
    except WorkdirError as e:
      refusal = str(e)
  encoded = np.zeros(1024, np.uint8)
  raw = refusal.encode()[:1024]
  encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
  shared = multihost_utils.broadcast_one_to_all(encoded)
  message = bytes(np.asarray(shared, np.uint8)).rstrip(b"\0").decode(errors="replace")
  if message:
    raise WorkdirError(message)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
