"""DataConfig validation and data-directory resolution."""

from __future__ import annotations

import os

import pytest

from rope_lab.data import (DATA_DIR_ENV, DataConfig, DataConfigError, DatasetNotPreparedError,
                           resolve_data_dir)


@pytest.mark.parametrize("kwargs, field", [
    ({"dataset": ""}, "dataset"),
    ({"tokenizer": "wordpiece"}, "tokenizer"),
    ({"tokenizer": "bpe"}, "vocab_size"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"vocab_size": True}, "vocab_size"),
    ({"ordering": "sorted"}, "ordering"),
    ({"packing": "none"}, "packing"),
    ({"ordering": "in_context", "packing": "pack"}, "packing"),
    ({"num_epochs": 0}, "num_epochs"),
    ({"icp_neighbours": 0}, "icp_neighbours"),
    ({"data_dir": ""}, "data_dir"),
    ({"shuffle": "yes"}, "shuffle"),
])
def test_invalid_field_is_named(kwargs, field):
  with pytest.raises(DataConfigError, match=rf"DataConfig\.{field}\b"):
    DataConfig(**kwargs)


def test_defaults_are_valid_and_frozen():
  cfg = DataConfig()
  assert (cfg.dataset, cfg.tokenizer) == ("kjv", "byte")
  assert (cfg.ordering, cfg.packing) == ("random", "pack")
  with pytest.raises(Exception):
    cfg.dataset = "pystdlib"  # type: ignore[misc]


def test_explicit_missing_data_dir_is_named(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(DatasetNotPreparedError, match="nope.*DataConfig.data_dir"):
    resolve_data_dir(missing)


def test_env_var_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
  assert resolve_data_dir(None) == str(tmp_path)
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match=DATA_DIR_ENV):
    resolve_data_dir(None)


def test_default_data_dir_is_created_under_the_cache(tmp_path, monkeypatch):
  monkeypatch.delenv(DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  path = resolve_data_dir(None)
  assert path == os.path.join(str(tmp_path), "rope_lab", "data") and os.path.isdir(path)
