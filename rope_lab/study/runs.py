"""The study's training runs: the base models, the extra models and the fine-tunes, by name.

A RunSpec is a run directory name under ``<workdir>/runs/`` and the experiment trained
there. Rows of results.jsonl carry the run's kind, method and training scale; ``run_key``
groups a row's (run, encoding) pair by those and the plan id, ``run_label`` names it for
display.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab.evaluate import plans as plans_lib
from rope_lab.study.config import StudyConfig


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A training run of the study and how it relates to the base model."""

  name: str
  kind: str  # base | finetune | ape | xpos | passkey
  seed: int
  exp: config_lib.ExperimentConfig
  method: str | None = None  # fine-tuning method
  train_scale: int = 1  # fine-tuning scale a (1: not fine-tuned)
  data_mix: float = 0.0  # passkey rows mixed into training


def _with_train(exp, **changes):
  return dataclasses.replace(exp, train=dataclasses.replace(exp.train, **changes))


def base_run(cfg: StudyConfig, seed: int, kind: str = "base") -> RunSpec:
  exp = _with_train(cfg.base, seed=seed)
  if kind == "ape":
    exp = dataclasses.replace(exp, encoding=pe.make("learned", max_length=cfg.train_length))
  elif kind == "xpos":
    exp = dataclasses.replace(exp, encoding=pe.make("xpos", base=cfg.base_frequency))
  elif kind == "passkey":
    rows = max(1, cfg.base.train.global_batch_size * cfg.train_length // cfg.passkey_train_length)
    exp = _with_train(exp, seq_len=cfg.passkey_train_length, global_batch_size=rows)
    return RunSpec(f"passkey_s{seed}", kind, seed, exp, data_mix=cfg.passkey_mix)
  return RunSpec(f"{kind}_s{seed}", kind, seed, exp)


def extra_runs(cfg: StudyConfig) -> list[RunSpec]:
  """The first seed's learned-APE, xPos and passkey-probe models, as the config asks."""
  return [base_run(cfg, cfg.seeds[0], kind) for kind, on in
          (("ape", cfg.ape), ("xpos", cfg.xpos), ("passkey", cfg.passkey_mix > 0)) if on]


def finetune_encoding(cfg: StudyConfig, method: str, scale: float) -> pe.Encoding:
  base = cfg.base_frequency
  if method == "pi":
    return pe.make("pi", base=base, factor=float(scale))
  return pe.make("yarn", base=base, factor=float(scale), original_max_position_embeddings=cfg.train_length)


def finetune_run(cfg: StudyConfig, seed: int, method: str, scale: int, learning_rate: float,
                 base_dir: str, prefix: str = "ft") -> RunSpec:
  """A short fine-tune of base model ``seed`` at ``scale`` x the length, same tokens per step."""
  rows = max(1, cfg.base.train.global_batch_size // scale)
  exp = dataclasses.replace(cfg.base, encoding=finetune_encoding(cfg, method, scale))
  exp = _with_train(exp, seed=seed, seq_len=cfg.train_length * scale, global_batch_size=rows,
                    steps=cfg.finetune_steps, learning_rate=learning_rate, lr_schedule="constant",
                    warmup_steps=cfg.finetune_warmup_steps, weight_decay=0.0, init_from=base_dir,
                    eval_every=0, checkpoint_every=0)
  return RunSpec(f"{prefix}_{method}{scale}_lr{learning_rate:g}_s{seed}", "finetune", seed, exp,
                 method=method, train_scale=scale)


def finetune_grid(cfg: StudyConfig, learning_rates) -> list[dict]:
  """The fine-tunes as sweep points: seed x method x learning rate at finetune_scale, then
  the Giraffe grid's PI fine-tunes (first grid_seeds seeds x grid scale x learning rate).
  configs/study.py's ``sweep=finetune`` declares the same points for sweep launchers."""
  main = [dict(seed=seed, method=method, scale=cfg.finetune_scale, lr=lr, prefix="ft")
          for seed, method, lr in itertools.product(cfg.seeds, cfg.finetune_methods, learning_rates)]
  grid_scales = [s for s in cfg.grid_train_scales
                 if s != cfg.finetune_scale or "pi" not in cfg.finetune_methods]
  grid = [dict(seed=seed, method="pi", scale=scale, lr=lr, prefix="grid")
          for seed, scale, lr in itertools.product(cfg.seeds[:cfg.grid_seeds], grid_scales, learning_rates)]
  return main + grid


def finetune_runs(cfg: StudyConfig, learning_rates, runs_dir: str) -> list[RunSpec]:
  """The fine-tunes of ``finetune_grid``, each starting from its seed's base model in ``runs_dir``."""
  return [finetune_run(cfg, p["seed"], p["method"], p["scale"], p["lr"],
                       os.path.join(runs_dir, base_run(cfg, p["seed"]).name), prefix=p["prefix"])
          for p in finetune_grid(cfg, learning_rates)]


def trained_plan(spec: RunSpec) -> plans_lib.EncodingPlan:
  """The run evaluated under the encoding it was trained with."""
  return plans_lib.EncodingPlan.of("trained", pe.to_dict(spec.exp.encoding), plans_lib.TRAINED)


def run_key(row) -> tuple:
  """What identifies a (run, encoding) pair across seeds and across kinds of measurement."""
  return (row["run_kind"], row["method"], row["train_scale"], row["plan_id"])


def run_label(row) -> str:
  """How a (run, encoding) pair is named in figures: base plans by encoding, fine-tunes by method."""
  if row["run_kind"] == "finetune":
    method = "PI" if row["method"] == "pi" else "YaRN"
    return f"{method} fine-tuned {row['train_scale']}x" + (
        "" if row["plan_id"] == plans_lib.TRAINED else f", {row['plan']}")
  if row["run_kind"] == "base":
    return row["plan"]
  return f"{row['run_kind']}: {row['plan']}"


def with_plan_ids(rows) -> list[dict]:
  """Rows with a ``plan_id``: rows written before rows carried ids get the id their label names."""
  return [row if "plan" not in row or "plan_id" in row else {**row, "plan_id": plans_lib.plan_id_of_label(row["plan"])}
          for row in rows]
