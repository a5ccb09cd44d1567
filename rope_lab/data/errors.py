"""Exceptions raised by the data package.

Each one subclasses a builtin (ValueError or FileNotFoundError) so callers that
do not know this package can still catch them, while the messages always name
the offending file, dataset or configuration field.
"""

from rope_lab.errors import ConfigError, DataError, MissingFileError


class DataConfigError(ConfigError):
  """A configuration value (a DataConfig field or a function argument) is invalid."""


class UnknownDatasetError(ConfigError):
  """A dataset name does not match any known dataset or catalog scheme."""


class DocumentError(DataError):
  """A source document cannot be used (empty file, bytes that are not UTF-8, too short)."""


class DatasetNotPreparedError(MissingFileError):
  """A dataset (or the data directory itself) is not available locally."""
