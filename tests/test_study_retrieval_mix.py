"""Which of the study's training runs get the short retrieval rows, and how they are packed."""

import dataclasses
import types

from configs import study as study_configs
from rope_lab.study import config as study_config
from rope_lab.study.measurements import Study
from rope_lab.study.runs import RunSpec


def _mix(cfg, kind):
  spec = RunSpec(name=kind, kind=kind, seed=0, exp=cfg.base)
  fake = types.SimpleNamespace(cfg=cfg)
  return Study.retrieval_mix(fake, spec), Study.retrieval_example_lengths(fake)


def test_the_full_study_packs_retrieval_rows_up_to_the_pretraining_length_and_keeps_them_in_fine_tunes():
  cfg = study_config.study_config_from_config_dict(study_configs.get_config())
  assert cfg.retrieval_mix > 0 and cfg.finetune_retrieval
  for kind in ("base", "ape", "variant", "finetune"):
    assert _mix(cfg, kind) == (cfg.retrieval_mix, (cfg.retrieval_min_length, cfg.train_length + 1))


def test_text_only_fine_tunes_and_whole_row_examples_remain_options():
  cfg = study_config.study_config_from_config_dict(study_configs.get_config())
  cfg = dataclasses.replace(cfg, finetune_retrieval=False, retrieval_min_length=0)
  assert _mix(cfg, "finetune") == (0.0, None)
  assert _mix(cfg, "base") == (cfg.retrieval_mix, None)
