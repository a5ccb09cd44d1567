"""Damaged or wrong inputs fail early with an error that names the file and says what to do."""

import glob
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from rope_lab.training import checkpoint

from rope_lab.training import loop as train
from rope_lab.data import DataConfig, load_token_store, sources
from rope_lab.errors import CheckpointError, ConfigError, DataError, MissingFileError
from rope_lab.evaluate import checkpoint_eval, plans, runs
from tests import train_helpers as th



@pytest.fixture(scope="module")
def prepared_kjv(tmp_path_factory):
  """kjv prepared once (records, manifest and the test split's token cache)."""
  data_dir = str(tmp_path_factory.mktemp("data"))
  load_token_store(DataConfig(dataset="kjv", data_dir=data_dir), "test")
  return data_dir


@pytest.fixture
def data_dir(prepared_kjv, tmp_path):
  copy = str(tmp_path / "data")
  shutil.copytree(prepared_kjv, copy)
  return copy


def records(data_dir, split="test"):
  (path,) = glob.glob(os.path.join(sources.embedded_version_dir("kjv", data_dir), f"kjv-{split}.array_record*"))
  return path


def cache(data_dir, name="tokens.bin"):
  (path,) = glob.glob(os.path.join(data_dir, "rope_lab_cache", "tokens", "kjv-*", "test", "byte", name))
  return path


def test_a_truncated_array_record_names_the_file_and_the_command_to_re_prepare(data_dir):
  path = records(data_dir)
  os.truncate(path, 64 * 1024)
  shutil.rmtree(os.path.join(data_dir, "rope_lab_cache"))
  with pytest.raises(DataError) as error:
    load_token_store(DataConfig(dataset="kjv", data_dir=data_dir), "test")
  assert f"{path} is truncated (65,536 bytes" in str(error.value)
  assert f"python -m experiments.prepare_data --dataset=kjv --data_dir={data_dir}" in str(error.value)


def test_a_truncated_array_record_without_a_manifest_still_names_the_dataset(data_dir):
  # Data prepared before sizes and checksums were recorded: the reader's failure is translated.
  os.remove(os.path.join(sources.embedded_version_dir("kjv", data_dir), "rope_lab_manifest.json"))
  os.truncate(records(data_dir), 64 * 1024)
  shutil.rmtree(os.path.join(data_dir, "rope_lab_cache"))
  with pytest.raises(DataError, match=r"split 'test' of dataset 'kjv' in .*re-prepare the dataset"):
    load_token_store(DataConfig(dataset="kjv", data_dir=data_dir), "test")


def test_an_array_record_corrupted_after_the_cache_was_built_is_detected(data_dir):
  path = records(data_dir)
  with open(path, "r+b") as f:  # same size, different bytes
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(DataError, match=f"{path} changed since it was written"):
    load_token_store(DataConfig(dataset="kjv", data_dir=data_dir), "test")


@pytest.mark.parametrize("name", ["tokens.bin", "offsets.npy"])
def test_a_truncated_token_cache_names_the_file_and_says_to_delete_the_cache(data_dir, name):
  path = cache(data_dir, name)
  size = os.path.getsize(path)
  os.truncate(path, size // 2)
  with pytest.raises(DataError) as error:
    load_token_store(DataConfig(dataset="kjv", data_dir=data_dir), "test")
  assert f"token cache: {path} is truncated ({size // 2:,} bytes, {size:,} when" in str(error.value)
  assert f"delete {os.path.dirname(path)}" in str(error.value)
  shutil.rmtree(os.path.dirname(path))  # what the message says: the cache is rebuilt
  assert load_token_store(DataConfig(dataset="kjv", data_dir=data_dir), "test").num_docs == 7


def test_a_truncated_safetensors_file_is_named(tmp_path):
  path = str(tmp_path / "model.safetensors")
  save_file({"a": np.ones((64, 64), np.float32), "b": np.zeros(8, np.float32)}, path)
  checkpoint.check_safetensors_complete(str(tmp_path))  # a whole file passes
  os.truncate(path, os.path.getsize(path) - 100)
  with pytest.raises(CheckpointError, match=f"{path} is truncated .*download or copy the checkpoint again"):
    checkpoint.check_safetensors_complete(str(tmp_path))
  os.truncate(path, 20)
  with pytest.raises(CheckpointError, match=f"{path} is truncated"):
    checkpoint.check_safetensors_complete(str(tmp_path))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny") / "run")
  train.run(th.tiny_experiment(steps=2), workdir)
  return workdir


SETTINGS = checkpoint_eval.EvalSettings(lengths=(16,), max_docs=1, doc_tokens=64)


def test_evaluating_a_workdir_without_checkpoints_speaks_of_the_workdir(tiny_run, tmp_path):
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  shutil.copy(os.path.join(tiny_run, "config.json"), empty)
  with pytest.raises(MissingFileError) as error:
    runs.load_run(empty)
  assert f"--workdir={empty!r}" in str(error.value) and "init_from" not in str(error.value)


def test_a_rope_checkpoint_under_learned_positions_is_a_clear_error(tiny_run, tmp_path):
  plan = plans.plan_from_json('{"name": "learned", "max_length": 64}')
  with pytest.raises(CheckpointError, match=r"encoding 'learned' needs parameters .* \(trained with 'rope'"):
    checkpoint_eval.evaluate_checkpoint(tiny_run, [plan], SETTINGS, str(tmp_path / "r.jsonl"),
                                        log=lambda m: None)
  assert not os.path.exists(tmp_path / "r.jsonl")


def test_xpos_beyond_its_overflow_length_is_refused_before_compute(tiny_run, tmp_path):
  # By hand from the xPos paper: zeta_i = (2i/d + gamma) / (1 + gamma), so the first pair's
  # zeta_0 = 0.4 / 1.4 for gamma 0.4; with centred positions the largest scale is
  # zeta_0^(-(L/2) / scale_base). float32's normal range ends at 2^-126 (and 2^128), and
  # 2^16 of head room for the entries leaves scales up to 2^110 = exp(76.25); with
  # scale_base 1 the longest window is 2 * 76.25 / ln(3.5) = 121.7 -> 121 tokens.
  # (At 141 tokens, where the scale alone reaches float32's maximum, the loss is NaN.)
  plan = plans.plan_from_json('{"name": "xpos", "scale_base": 1.0}')
  settings = checkpoint_eval.EvalSettings(lengths=(122,), max_docs=1, doc_tokens=256)
  with pytest.raises(ConfigError, match=r"evaluation length=122 is beyond xPos's overflow length 121"):
    checkpoint_eval.evaluate_checkpoint(tiny_run, [plan], settings, str(tmp_path / "r.jsonl"),
                                        log=lambda m: None)
  rows = checkpoint_eval.evaluate_checkpoint(
      tiny_run, [plan], checkpoint_eval.EvalSettings(lengths=(121,), max_docs=1, doc_tokens=256),
      str(tmp_path / "r.jsonl"), log=lambda m: None)
  assert np.isfinite(rows[0]["metrics"]["loss"])
  exp = th.tiny_experiment(steps=1, seq_len=122, pe="xpos:scale_base=1.0")
  with pytest.raises(ConfigError, match=r"config.seq_len=122 is beyond xPos's overflow length 121"):
    train.run(exp, str(tmp_path / "xpos"))
