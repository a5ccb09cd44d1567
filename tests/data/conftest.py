"""Shared fixtures for the data tests: no network, a prepared KJV, small text corpora."""

from __future__ import annotations

import socket

import pytest

from rope_lab.data import DataConfig, prepare
from tests.data.helpers import topic_documents, write_files


@pytest.fixture(autouse=True, scope="package")
def no_network():
  """Any attempt to open a network connection fails at once (undone after this package)."""
  def refuse(*args, **kwargs):
    raise RuntimeError("network access attempted in a data test")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture(scope="package")
def kjv_data_dir(no_network, tmp_path_factory) -> str:
  """A data directory with the kjv corpus prepared (byte tokens, all splits)."""
  del no_network  # Requested so preparation runs with the network blocked too.
  data_dir = str(tmp_path_factory.mktemp("kjv_data"))
  prepare(DataConfig(dataset="kjv", data_dir=data_dir))
  return data_dir


@pytest.fixture(scope="package")
def topic_corpus(tmp_path_factory) -> tuple[str, str]:
  """(data_dir, 'files:<glob>') for 40 short documents on four topics."""
  root = tmp_path_factory.mktemp("topics")
  pattern = write_files(root / "docs", topic_documents())
  data_dir = root / "data"
  data_dir.mkdir()
  return str(data_dir), f"files:{pattern}"
