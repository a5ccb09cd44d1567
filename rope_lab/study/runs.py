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
from typing import TYPE_CHECKING

from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab.evaluate import plans as plans_lib
from rope_lab.study import declarations
from rope_lab.study.declarations import RunDeclaration

if TYPE_CHECKING:  # a type-only reference: study.config imports this module, not the reverse
  from rope_lab.study.config import StudyConfig


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A training run of the study and how it relates to the base model."""

  name: str
  kind: str  # base | variant (a declared pretraining run) | finetune | ape | passkey
  seed: int
  exp: config_lib.ExperimentConfig
  method: str | None = None  # the declaration's label (variants and fine-tunes)
  train_scale: int = 1  # fine-tuning scale a (1: not fine-tuned)
  data_mix: float = 0.0  # passkey rows mixed into training
  matched_eval: bool = False  # also evaluated with its factor matched to each window (PI s=L/L0)


def _with_train(exp, **changes):
  return dataclasses.replace(exp, train=dataclasses.replace(exp.train, **changes))


def with_retrieval_rows(cfg: StudyConfig, exp: config_lib.ExperimentConfig,
                        kind: str) -> config_lib.ExperimentConfig:
  """``exp`` with the study's short retrieval rows in its training data (DataConfig.retrieval_mix).

  Every pretraining run gets the same mix (base models, the absolute-position model, the declared
  variants), so that a variant and the base model it is compared with saw the same text;
  fine-tunes get it too unless ``finetune_retrieval`` is off (a text-only fine-tune of 5% of the
  pretraining steps erased the taught passkey at every length, the training length included).
  Packed examples span retrieval_min_length..L + 1 tokens in every run (L: the pretraining
  length, also in a fine-tune's longer rows), or fill their row (retrieval_min_length 0). This is
  applied to the base experiment before a run's declaration, so a declaration's own ``data.``
  fields (``data.retrieval_mix=0.6``, say) change only what they name, as in configs/study.py.
  """
  if not cfg.retrieval_mix or kind not in ("base", "ape", "variant", "finetune") or (
      kind == "finetune" and not cfg.finetune_retrieval):
    return exp
  shortest = cfg.retrieval_min_length
  data = dataclasses.replace(exp.data, retrieval_mix=cfg.retrieval_mix, retrieval_min_length=shortest,
                             retrieval_max_length=cfg.train_length + 1 if shortest else 0)
  return dataclasses.replace(exp, data=data)


def base_run(cfg: StudyConfig, seed: int, kind: str = "base") -> RunSpec:
  """The base model of ``seed``, or the first seed's absolute-position model (``config.ape_model``)
  or passkey probe (``kind``)."""
  exp = _with_train(with_retrieval_rows(cfg, cfg.base, kind), seed=seed)
  if kind == "ape":
    exp = declarations.declared_experiment(
        exp, cfg.ape_model, length=cfg.train_length, train_length=cfg.train_length,
        defaults=encoding_defaults(cfg), where="config.ape_model", seed=seed)
  elif kind == "passkey":
    rows = max(1, cfg.base.train.global_batch_size * cfg.train_length // cfg.passkey_train_length)
    exp = _with_train(exp, seq_len=cfg.passkey_train_length, global_batch_size=rows)
    return RunSpec(f"passkey_s{seed}", kind, seed, exp, data_mix=cfg.passkey_mix)
  return RunSpec(f"{kind}_s{seed}", kind, seed, exp)


def encoding_defaults(cfg: StudyConfig, scale: float | None = None) -> dict:
  """What a declared run's encoding takes from the base model where its entry is silent."""
  defaults = {"base": cfg.base_frequency, "original_max_position_embeddings": cfg.train_length,
              "max_length": cfg.train_length}
  return defaults if scale is None else {**defaults, "factor": float(scale)}


def variant_run(cfg: StudyConfig, run: RunDeclaration, seed: int) -> RunSpec:
  """A declared pretraining variant: the base run with the entry's encoding and overrides."""
  exp = declarations.declared_experiment(
      with_retrieval_rows(cfg, cfg.base, "variant"), run, length=cfg.train_length, train_length=cfg.train_length,
      defaults=encoding_defaults(cfg), where="config.pretrain_variants", seed=seed)
  return RunSpec(f"{run.label}_s{seed}", "variant", seed, exp, method=run.label)


def variant_runs(cfg: StudyConfig) -> list[RunSpec]:
  """Every declared variant for the first variant_seeds seeds."""
  return [variant_run(cfg, run, seed) for run in cfg.pretrain_variants
          for seed in run.seeds_of(cfg.seeds, cfg.variant_seeds)]


def extra_runs(cfg: StudyConfig) -> list[RunSpec]:
  """The first seed's absolute-position and passkey-probe models as the config asks, then the variants."""
  return [base_run(cfg, cfg.seeds[0], kind) for kind, on in
          (("ape", cfg.ape), ("passkey", cfg.passkey_mix > 0)) if on] + variant_runs(cfg)


def finetune_declaration(cfg: StudyConfig, label: str) -> RunDeclaration:
  return next(run for run in cfg.finetunes if run.label == label)


def finetune_run(cfg: StudyConfig, seed: int, label: str, scale: int, learning_rate: float,
                 base_dir: str, prefix: str = "ft") -> RunSpec:
  """A short fine-tune (declared as ``label``) of base model ``seed`` at ``scale`` x the length,
  same tokens per step."""
  run = finetune_declaration(cfg, label)
  exp = declarations.declared_experiment(
      with_retrieval_rows(cfg, cfg.base, "finetune"), run, length=cfg.train_length * scale, train_length=cfg.train_length,
      defaults=encoding_defaults(cfg, scale), where="config.finetunes", seed=seed, steps=cfg.finetune_steps,
      learning_rate=learning_rate, lr_schedule="constant", warmup_steps=cfg.finetune_warmup_steps,
      weight_decay=0.0, init_from=base_dir, eval_every=0, checkpoint_every=0)
  return RunSpec(f"{prefix}_{label}{scale}_lr{learning_rate:g}_s{seed}", "finetune", seed, exp,
                 method=label, train_scale=scale, matched_eval=label == cfg.grid_finetune)


def grid_scales(cfg: StudyConfig) -> list[int]:
  """The Giraffe grid's extra scales (finetune_scale is already among the main fine-tunes)."""
  return [s for s in cfg.grid_train_scales if s != cfg.finetune_scale]


def finetune_grid(cfg: StudyConfig, learning_rates) -> list[dict]:
  """The fine-tunes as sweep points: seed x declared fine-tune x learning rate at finetune_scale,
  then the Giraffe grid's fine-tunes (first grid_seeds seeds x grid scale x learning rate).
  configs/study.py's ``sweep=finetune`` declares the same points for sweep launchers."""
  main = [dict(seed=seed, method=run.label, scale=cfg.finetune_scale, lr=lr, prefix="ft")
          for seed in cfg.seeds for run in cfg.finetunes for lr in learning_rates
          if seed in run.seeds_of(cfg.seeds)]
  grid = [dict(seed=seed, method=cfg.grid_finetune, scale=scale, lr=lr, prefix="grid")
          for seed, scale, lr in itertools.product(cfg.seeds[:cfg.grid_seeds], grid_scales(cfg), learning_rates)]
  return main + grid


def finetune_runs(cfg: StudyConfig, learning_rates, runs_dir: str) -> list[RunSpec]:
  """The fine-tunes of ``finetune_grid``, each starting from its seed's base model in ``runs_dir``."""
  return [finetune_run(cfg, p["seed"], p["method"], p["scale"], p["lr"],
                       os.path.join(runs_dir, base_run(cfg, p["seed"]).name), prefix=p["prefix"])
          for p in finetune_grid(cfg, learning_rates)]


def declared_runs(cfg: StudyConfig, base_dir: str) -> list[RunSpec]:
  """Every declared run (the APE model, variants, fine-tunes at each candidate rate and the grid), built: a bad
  entry fails here with its field and entry named, before anything is trained."""
  ape = [base_run(cfg, cfg.seeds[0], "ape")] if cfg.ape else []
  return ape + variant_runs(cfg) + finetune_runs(cfg, cfg.finetune_learning_rates, base_dir)


def trained_plan(spec: RunSpec) -> plans_lib.EncodingPlan:
  """The run evaluated under the encoding it was trained with."""
  return plans_lib.EncodingPlan.of("trained", pe.to_dict(spec.exp.encoding), plans_lib.TRAINED)


def run_key(row) -> tuple:
  """What identifies a (run, encoding) pair across seeds and across kinds of measurement."""
  return (row["run_kind"], row["method"], row["train_scale"], row["plan_id"])


def run_label(row) -> str:
  """How a (run, encoding) pair is named in figures: base plans by encoding, declared runs by label."""
  if row["run_kind"] == "finetune":
    return f"{row['method']} fine-tuned {row['train_scale']}x" + (
        "" if row["plan_id"] == plans_lib.TRAINED else f", {row['plan']}")
  if row["run_kind"] == "base":
    return row["plan"]
  if row["run_kind"] == "variant":
    return f"{row['method']} (pretrained)" + ("" if row["plan_id"] == plans_lib.TRAINED else f", {row['plan']}")
  return f"{row['run_kind']}: {row['plan']}"


def with_plan_ids(rows) -> list[dict]:
  """Rows with a ``plan_id``: rows written before rows carried ids get the id their label names."""
  return [row if "plan" not in row or "plan_id" in row else {**row, "plan_id": plans_lib.plan_id_of_label(row["plan"])}
          for row in rows]
