"""The reference context-extension study on the embedded King James Bible, sized for a 2-core CPU.

  python -m experiments.study --workdir=/tmp/rope_lab/study            # full: 3 seeds, ~30 min
  python -m experiments.study --workdir=/tmp/rope_lab/study_quick --quick   # 1 seed, ~6 min

(2 CPU cores shared with other jobs; the budgets are 45 and 10 minutes.)

Arguments (``--config=configs/study.py:<arg>``; any field can then be overridden,
e.g. ``--config.seeds=0,1``):

  (none)  the full study: three seeds of the tiny RoPE model at 128 tokens (500 steps),
          evaluated at
          1x..32x (128..4096 tokens) under ten encodings, PI and YaRN fine-tunes at 4x, the
          Giraffe grid, the learned-APE comparison, passkey and key-value retrieval.
  quick   one seed, half the training, shorter fine-tunes, one evaluation document, no
          APE model and no extra grid fine-tunes; the same figures and report.

The pretraining run is ``configs/tiny_cpu.py``'s model and data (``config.base``).

Sweep (``get_sweep``): ``sweep=seeds`` splits the study into one study per seed, each its own
run of ``experiments.study`` that a sweep launcher can place on its own machine:

  python -m experiments.sweep --config=configs/study.py:quick,sweep=seeds \
      --workdir=/tmp/rope_lab/study_seeds --launcher=print
"""

import ml_collections

from configs import common, tiny_cpu

ENTRY_POINT = "experiments.study"  # what a sweep of this config runs (default: experiments.train)


def base_experiment(steps: int) -> ml_collections.ConfigDict:
  base = tiny_cpu.get_config()
  # Evaluation during training only needs to show the loss curve; checkpoints only at the end.
  base.update(steps=steps, eval_every=max(steps // 3, 1), eval_batches=4, checkpoint_every=0,
              keep_checkpoints=1, async_checkpointing=False, tensorboard=False, log_every=25)
  return base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, "configs/study.py", quick=False, sweep="")
  config = ml_collections.ConfigDict()
  config.base = base_experiment(steps=500)
  config.seeds = (0, 1, 2)
  config.eval_scales = (1, 2, 4, 8, 16, 32)
  config.stride_fraction = 0.5
  config.eval_split = "test"
  config.choice_split = "validation"
  config.eval_docs = 2
  config.eval_doc_tokens = 8192
  config.static_scale = 4.0
  config.finetune_methods = ("pi", "yarn")
  config.finetune_scale = 4
  config.finetune_steps = 25  # 5% of the 500 pretraining steps, same tokens per step
  # Candidates tried on validation with PI on the first seed; the best is used for all.
  config.finetune_learning_rates = (3e-4, 1e-3, 3e-3)
  config.finetune_warmup_steps = 5
  config.grid_train_scales = (2, 4, 8)
  config.grid_seeds = 1
  config.ape = True
  config.xpos = False
  config.retrieval_seeds = 1
  config.passkey_lengths = (256, 512, 1024, 2048)
  config.passkey_depths = (0.0, 0.25, 0.5, 0.75, 1.0)
  config.passkey_samples = 2
  config.middle_length = 512
  config.middle_depths = 11
  config.middle_samples = 2
  config.lines_lengths = (512, 1024, 2048)
  config.lines_samples = 4
  # A passkey probe model (rows of passkey examples mixed into training) is off: at this
  # size and budget it did not learn to copy the key even at its own length (see the report).
  config.passkey_mix = 0.0
  config.passkey_train_length = 256
  config.attention_scales = (1, 4, 16)
  config.attention_docs = 2
  config.analytic_scale = 32
  if arg.quick:
    config.base = base_experiment(steps=250)
    config.seeds = (0,)
    config.eval_docs = 1
    config.finetune_steps = 13
    config.finetune_learning_rates = (1e-3,)
    config.grid_train_scales = (4,)
    config.ape = False
    config.passkey_lengths = (256, 512, 1024)
    config.passkey_samples = 1
    config.middle_samples = 1
    config.lines_lengths = (512, 1024)
    config.lines_samples = 2
    config.attention_docs = 1
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """``sweep=seeds``: the study's seeds as separate runs (the grids inside a run stay its own)."""
  arg = common.parse_arg(arg, "configs/study.py", quick=False, sweep="")
  if arg.sweep != "seeds":
    raise ValueError(f"configs/study.py: sweep={arg.sweep!r}; its sweeps: seeds")
  seeds = get_config("quick" if arg.quick else None).seeds
  return common.sweep("config.seeds", [(seed,) for seed in seeds])
