"""Which of the study's training runs get the short retrieval rows, and how they are packed:
part of each run's experiment (DataConfig), so that a sweep trains the same runs."""

import dataclasses

import numpy as np
import pytest

from configs import study as study_configs
from rope_lab.training import loop as train
from rope_lab.data import DataConfig, DataConfigError
from rope_lab.study import config as study_config
from rope_lab.study import runs


def _mix(cfg, kind):
  if kind == "finetune":
    exp = runs.finetune_run(cfg, 0, cfg.finetunes[0].label, cfg.finetune_scale, 1e-3, "/runs/base_s0").exp
  elif kind == "variant":
    exp = runs.variant_runs(cfg)[0].exp
  else:
    exp = runs.base_run(cfg, 0, kind).exp
  return exp.data.retrieval_mix, exp.data.retrieval_min_length, exp.data.retrieval_max_length


def test_the_full_study_packs_retrieval_rows_up_to_the_pretraining_length_and_keeps_them_in_fine_tunes():
  cfg = study_config.study_config_from_config_dict(study_configs.get_config())
  assert cfg.retrieval_mix > 0 and cfg.finetune_retrieval
  for kind in ("base", "ape", "variant", "finetune"):
    assert _mix(cfg, kind) == (cfg.retrieval_mix, cfg.retrieval_min_length, cfg.train_length + 1), kind


def test_a_declared_mix_changes_only_the_fraction_and_sweeps_build_the_same_run():
  # A declaration's own data.retrieval_mix replaces the study's fraction; the packing lengths stay
  # the study's, in the study's runs and in configs/study.py's sweep runs alike.
  from rope_lab import config as config_lib  # pylint: disable=g-import-not-at-top
  config = study_configs.get_config()
  config.ape_model = "sinusoidal | model.embedding_multiplier=11.31 | data.retrieval_mix=0.6"
  config.pretrain_variants = ("mixed=rope | data.retrieval_mix=0.5",)
  cfg = study_config.study_config_from_config_dict(config)
  assert _mix(cfg, "ape") == (0.6, cfg.retrieval_min_length, cfg.train_length + 1)
  assert _mix(cfg, "variant") == (0.5, cfg.retrieval_min_length, cfg.train_length + 1)
  assert _mix(cfg, "base") == (cfg.retrieval_mix, cfg.retrieval_min_length, cfg.train_length + 1)
  for kind, method, spec in (("ape", "", runs.base_run(cfg, 0, "ape")),
                             ("variant", "mixed", runs.variant_runs(cfg)[0])):
    swept = config_lib.experiment_from_config_dict(study_configs.training_run(config, kind, seed=0, method=method))
    assert swept == spec.exp, kind


def test_text_only_fine_tunes_and_whole_row_examples_remain_options():
  cfg = study_config.study_config_from_config_dict(study_configs.get_config())
  cfg = dataclasses.replace(cfg, finetune_retrieval=False, retrieval_min_length=0)
  assert _mix(cfg, "finetune") == (0.0, 0, 0)
  assert _mix(cfg, "base") == (cfg.retrieval_mix, 0, 0)


def test_the_project_data_source_mixes_retrieval_rows_into_the_training_split_only():
  data = DataConfig(dataset="random:", retrieval_mix=0.5, retrieval_min_length=120, retrieval_max_length=200)
  source = train.rope_lab_data_source(data)
  args = dict(seq_len=256, global_batch_size=8, seed=3, process_index=0, process_count=1)
  plain = next(train.rope_lab_data_source(dataclasses.replace(data, retrieval_mix=0.0))("train", **args))
  mixed = next(source("train", **args))
  replaced = np.flatnonzero((mixed["inputs"] != plain["inputs"]).any(axis=1))
  assert 0 < len(replaced) < 8
  # A replaced row holds packed examples of 120..200 tokens (119..199 inputs), positions from 0,
  # and the loss only on their answers.
  row = replaced[0]
  segments = mixed["segment_ids"][row]
  for segment in set(segments[segments > 0].tolist()):
    where = np.flatnonzero(segments == segment)
    assert 119 <= len(where) <= 199 and mixed["positions"][row, where[0]] == 0
  assert 0 < mixed["loss_mask"][row].sum() < (segments > 0).sum()
  evaluation = next(source("validation", **args))
  assert np.array_equal(evaluation["inputs"], next(train.rope_lab_data_source(
      dataclasses.replace(data, retrieval_mix=0.0))("validation", **args))["inputs"])


@pytest.mark.parametrize("changes", [dict(retrieval_mix=1.5), dict(retrieval_min_length=1, retrieval_max_length=4),
                                     dict(retrieval_min_length=8, retrieval_max_length=4)])
def test_bad_retrieval_rows_name_the_field(changes):
  with pytest.raises(DataConfigError, match="DataConfig.retrieval_m"):
    DataConfig(**changes)
