"""Zero-shot evaluation of a trained checkpoint under one encoding, as a config file and a sweep.

What ``experiments/evaluate.py --encoding='{...}'`` does, in config form, so that the sweep
machinery can run it: one run evaluates ``config.checkpoint`` under ``config.pe`` and writes
its rows to ``<workdir>/results.jsonl``; the local sweep launcher gathers every run's rows
into the sweep's results.jsonl.

  python -m experiments.evaluate --config=configs/evaluate.py:pe=yarn,factor=4 \\
      --config.checkpoint=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/tiny_eval/yarn4

Arguments (``key=value``, comma-separated):

  pe=rope        the encoding applied zero-shot; config.pe then holds that method's
                 parameters, e.g. ``--config.pe.beta_fast=16``
  factor=0       its extension factor s (0: the method's default)
  seed=0         the trained model's seed: ``{seed}`` in config.checkpoint stands for it,
                 so one sweep covers the checkpoints of a seed sweep
  train_length=128  tokens the checkpoint was trained on (YaRN-style ramps need it)
  sweep=zero_shot   (get_sweep) encoding (PI, YaRN, NTK-by-parts, dynamic NTK) x factor
                    (2, 4) x seed (0, 1, 2): 24 runs

The zero-shot sweep over the three seeds of ``configs/tiny_cpu.py:smoke,sweep=seeds`` (the
README's Sweeps section trains them in /tmp/rope_lab/seeds):

  python -m experiments.sweep --config=configs/evaluate.py:sweep=zero_shot \\
      --set=config.checkpoint=/tmp/rope_lab/seeds/seed-{seed} \\
      --workdir=/tmp/rope_lab/zero_shot --launcher=local
"""

import ml_collections

from configs import common

ENTRY_POINT = "experiments.evaluate"  # what a sweep of this config runs
ROPE_BASE = 10000.0  # the rotary base of the project's trained models
SWEEP_ENCODINGS = ("pi", "yarn", "ntk_by_parts", "dynamic_ntk")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, "configs/evaluate.py", pe="rope", factor=0.0, seed=0,
                         train_length=128, sweep="")
  config = ml_collections.ConfigDict()
  config.checkpoint = ml_collections.config_dict.placeholder(str)  # the trained run directory
  config.seed = arg.seed  # replaces {seed} in config.checkpoint
  has_factor = "factor" in common.PE_PARAMETERS.get(arg.pe, {})
  config.pe = common.pe_config(
      arg.pe, **({"factor": arg.factor} if arg.factor and has_factor else {}),
      context={"base": ROPE_BASE, "original_max_position_embeddings": arg.train_length})
  config.label = ""  # the curve's name in rows and figures ("": method and factor)
  config.lengths = (128, 256, 512, 1024)  # perplexity window lengths (tokens)
  config.stride_fraction = 0.5  # sliding-window stride as a fraction of the window
  config.split = "test"  # held-out split scored
  config.max_docs = 1  # documents scored
  config.doc_tokens = 2048  # tokens scored per document, the same at every length
  config.passkey_lengths = ()  # passkey context lengths (>= ~170 tokens); (): none
  config.passkey_depths = (0.0, 0.25, 0.5, 0.75, 1.0)  # where the key sits, as a fraction
  config.passkey_samples = 2  # examples per (length, depth)
  config.lines_lengths = ()  # key-value lines context lengths (>= ~400 tokens); (): none
  config.lines_samples = 4  # examples per length
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """``sweep=zero_shot``: encoding x factor x seed."""
  arg = common.parse_arg(arg, "configs/evaluate.py", pe="rope", factor=0.0, seed=0,
                         train_length=128, sweep="")
  if arg.sweep != "zero_shot":
    raise ValueError(f"configs/evaluate.py: sweep={arg.sweep!r}; its sweeps: zero_shot")
  return common.product(common.sweep("pe", SWEEP_ENCODINGS), common.sweep("factor", [2.0, 4.0]),
                        common.sweep("seed", [0, 1, 2]))
