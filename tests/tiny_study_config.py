"""The reference study at test size, as a config file for ``experiments.study --config``:
tests/tiny_config.py's model on random bytes, 4 steps, one seed, two lengths, no extras.
Its training runs are a sweep as configs/study.py's (``sweep=base``, ``sweep=finetune``)."""

import ml_collections

from configs import common
from configs import study
from tests import tiny_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, "tests/tiny_study_config.py", sweep="", **study.RUN_ARGS)
  config = study_config()
  if arg.run:
    return study.training_run(config, arg.run, seed=arg.seed, method=arg.method, scale=arg.scale,
                              lr=arg.lr, where="tests/tiny_study_config.py")
  return config


def get_entry_point(arg: str | None = None) -> str:
  return study.get_entry_point(arg)


def get_sweep(arg: str | None = None) -> list[dict]:
  arg = common.parse_arg(arg, "tests/tiny_study_config.py", sweep="", **study.RUN_ARGS)
  return study.training_sweep(study_config(), arg.sweep)


def study_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base = tiny_config.get_config()
  config.base.update(steps=4, checkpoint_every=2)  # a periodic save exercises orbax's paths
  config.seeds = (0,)
  config.eval_scales = (1, 2)
  config.eval_docs = 1
  config.eval_doc_tokens = 192  # 11 windows at the longest length: enough units for an interval
  config.static_scale = 2.0
  config.finetune_scale = 2
  config.finetunes = ("pi=pi", "yarn=yarn")
  config.grid_finetune = "pi"
  config.pretrain_variants = ()
  config.variant_seeds = 1
  config.finetune_steps = 2
  config.finetune_learning_rates = (1e-2,)
  config.finetune_warmup_steps = 0
  config.grid_train_scales = ()
  config.grid_seeds = 1
  config.ape = False
  config.passkey_lengths = ()
  config.lines_lengths = ()
  config.middle_length = 176
  config.middle_depths = 2
  config.middle_samples = 1
  config.attention_scales = (1,)
  config.attention_docs = 1
  config.analytic_scale = 2
  # LongRoPE's search at its smallest: 4 candidates, 1 generation of 2 + 2 children, 1 document.
  config.longrope_search = True
  config.longrope_population = 4
  config.longrope_generations = 1
  config.longrope_mutations = 2
  config.longrope_crossovers = 2
  config.longrope_top_k = 2
  config.longrope_docs = 1
  return config
