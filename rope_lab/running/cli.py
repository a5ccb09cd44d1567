"""What every entry point in experiments/ does the same way: paths, logs, errors, exit codes.

* Paths from flags and configs are made absolute once, here, before the library sees
  them (orbax refuses relative paths, and a relative path means something else after a
  ``chdir``). Remote paths (``gs://...``) and the ``hf:``/``gguf:`` prefixes are kept.
* Quiet by default: the terminal shows the run's own progress lines, warnings and the
  final paths; orbax's INFO lines, absl's messages and TFDS progress bars go only to
  ``<workdir>/log.txt`` (everything at INFO). ``--verbosity=0`` (or higher) shows them on
  the terminal too.
* One exit convention: a :class:`rope_lab.errors.RopeLabError` prints ``error: <message>``
  (``config error:`` for a ConfigError) without a traceback and exits 2; Ctrl-C exits 130
  and SIGTERM 143 (what a shell reports for those signals), saying how to resume.
"""

from __future__ import annotations

import logging as py_logging
import os
import signal
import sys
from collections.abc import Callable

from absl import app, flags, logging
from absl.logging import converter

from rope_lab.errors import ConfigError, RopeLabError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
LOG_FILE = "log.txt"

_REMOTE_PREFIXES = ("gs://", "s3://", "http://", "https://")
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Terminated(BaseException):
  """SIGTERM arrived (raised from the handler so ``finally`` blocks still run)."""


def absolute_path(path: str | None) -> str | None:
  """``path`` made absolute (``~`` expanded); None, remote URLs and an ``hf:``/``gguf:`` prefix kept."""
  if path is None or path.startswith(_REMOTE_PREFIXES):
    return path
  for prefix in ("hf:", "gguf:"):
    if path.startswith(prefix):
      return prefix + absolute_path(path[len(prefix):])
  return os.path.abspath(os.path.expanduser(path))


def _verbosity_requested() -> bool:
  return "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present


def quiet_libraries() -> None:
  """Terminal: WARNING and above unless --verbosity was given."""
  handler = logging.get_absl_handler()
  if _verbosity_requested():
    handler.setLevel(converter.absl_to_standard(flags.FLAGS.verbosity))
  else:
    handler.setLevel(py_logging.WARNING)
  # The root level decides what reaches log.txt; the terminal filters at its handler.
  root = py_logging.getLogger()
  root.setLevel(min(handler.level, py_logging.INFO))
  logging.set_verbosity(logging.INFO if not _verbosity_requested()
                        else max(flags.FLAGS.verbosity, logging.INFO))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # TFDS's progress bars are turned off where rope_lab prepares a dataset
  # (rope_lab.data.sources), so entry points that never touch TFDS skip its import.


def log_to_file(workdir: str) -> str:
  """Every log record at INFO and above also goes to ``<workdir>/log.txt`` (appended)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOG_FILE)
  root = py_logging.getLogger()
  for handler in root.handlers:
    if isinstance(handler, py_logging.FileHandler) and handler.baseFilename == path:
      return path
  handler = py_logging.FileHandler(path, encoding="utf-8")
  handler.setLevel(py_logging.INFO)
  handler.setFormatter(py_logging.Formatter(_FILE_FORMAT))
  root.addHandler(handler)
  logging.info("command: %s", " ".join(sys.argv))
  return path


def say(message: str) -> None:
  """A line the user should see (progress, final paths), also kept in log.txt."""
  print(message, flush=True)
  py_logging.getLogger("rope_lab").info(message)


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


def _exit_on(error: BaseException, code: int, message: str) -> None:
  # The traceback goes to log.txt only (INFO is below the terminal's level).
  py_logging.getLogger("rope_lab").info(message, exc_info=(type(error), error, error.__traceback__))
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  sys.exit(code)


def guarded(main: Callable[[list[str]], int | None], *, resume_hint: str = "") -> Callable:
  """``main`` with the one exit convention (see the module docstring)."""
  def wrapped(argv):
    quiet_libraries()
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
      signal.signal(signal.SIGTERM, _raise_terminated)
    hint = f"; {resume_hint}" if resume_hint else ""
    try:
      return main(argv)
    except ConfigError as e:
      _exit_on(e, EXIT_ERROR, f"config error: {e}")
    except RopeLabError as e:
      _exit_on(e, EXIT_ERROR, f"error: {e}")
    except KeyboardInterrupt as e:
      _exit_on(e, EXIT_INTERRUPTED, f"interrupted{hint}")
    except Terminated as e:
      _exit_on(e, EXIT_TERMINATED, f"terminated (SIGTERM){hint}")
    finally:
      if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
  return wrapped


def run(main: Callable[[list[str]], int | None], *, resume_hint: str = "",
        flags_parser: Callable | None = None) -> None:
  """``absl.app.run`` of ``guarded(main)``."""
  kwargs = {"flags_parser": flags_parser} if flags_parser is not None else {}
  app.run(guarded(main, resume_hint=resume_hint), **kwargs)
