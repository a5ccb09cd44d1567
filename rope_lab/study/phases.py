"""The phases of the reference study, in order, and the function that runs them.

Phases: base RoPE models (one per seed) -> the absolute-position (APE) model, the declared pretraining
variants (and optionally a passkey probe model) -> LongRoPE's factor search on the first seed's
base model (validation documents) -> fine-tuning learning rate chosen on
validation -> the declared fine-tunes at ``finetune_scale`` and the Giraffe grid's ->
perplexity vs length on the test documents -> passkey / key-value retrieval -> attention
maps and mean q/k -> figures -> report. Test documents are only ever scored; every choice
uses validation. A new phase is a function of the Study added to PHASES.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np

from rope_lab import pe
from rope_lab import results as results_lib
from rope_lab.evaluate import attention_maps, plans as plans_lib
from rope_lab.study import longrope
from rope_lab.study.config import StudyConfig, read_study_config, save_config
from rope_lab.study.measurements import RESULTS_FILE, Study
from rope_lab.study.runs import RunSpec, base_run, extra_runs, finetune_runs, trained_plan, with_plan_ids


def finetune_specs(study: Study) -> list[RunSpec]:
  """Every seed's declared fine-tunes at finetune_scale, and the Giraffe grid's fine-tunes."""
  return finetune_runs(study.cfg, (study.finetune_lr,), study.path("runs"))


def zero_shot_plans(cfg: StudyConfig, train_length: int | None = None) -> list[plans_lib.EncodingPlan]:
  """The RoPE-family encodings applied zero-shot to a model trained at ``train_length``."""
  return plans_lib.rope_family_plans(train_length or cfg.train_length, base=cfg.base_frequency,
                                     scale=cfg.static_scale)


def _subset(plans: list[plans_lib.EncodingPlan], ids) -> list[plans_lib.EncodingPlan]:
  return [p for p in plans if p.id in ids]


def evaluate_perplexity(study: Study, extra: list[RunSpec], finetunes: list[RunSpec]) -> None:
  cfg = study.cfg
  zero_shot = zero_shot_plans(cfg) + longrope.plans(study)  # LongRoPE: factors searched on seed 0
  (matched_pi,) = _subset(zero_shot, {plans_lib.PI_MATCHED})
  for seed in cfg.seeds:
    spec = base_run(cfg, seed)
    for plan in zero_shot:
      study.log(f"perplexity {spec.name} {plan.label}")
      study.perplexity(spec, plan, cfg.eval_scales)
  # Giraffe's grid fine-tune at 2a is compared with the best training-free method at 2a x L
  # (rope_lab/study/claims.py): that method is chosen on the choice split, on the first
  # seed's base model, never on the reported documents.
  choice_scale = 2 * cfg.finetune_scale
  if choice_scale in cfg.eval_scales:
    spec = base_run(cfg, cfg.seeds[0])
    for plan in zero_shot:
      study.log(f"perplexity {spec.name} {plan.label} on {cfg.choice_split} (choosing the best zero-shot method)")
      study.perplexity(spec, plan, [choice_scale], split=cfg.choice_split)
  for spec in finetunes:
    study.log(f"perplexity {spec.name}")
    study.perplexity(spec, trained_plan(spec), cfg.eval_scales)
    if spec.matched_eval:  # the Giraffe grid: evaluate at scale b with PI factor b
      study.perplexity(spec, matched_pi, cfg.eval_scales)
  for spec in extra:
    if spec.kind == "ape":
      for plan in plans_lib.ape_plans(cfg.train_length, pe.to_dict(spec.exp.encoding)):
        study.log(f"perplexity {spec.name} {plan.label}")
        study.perplexity(spec, plan, cfg.eval_scales)
    elif spec.kind == "variant":  # declared pretraining runs: evaluated as trained
      study.log(f"perplexity {spec.name}")
      study.perplexity(spec, trained_plan(spec), cfg.eval_scales)


def retrieval_plans(cfg: StudyConfig, train_length: int) -> list[plans_lib.EncodingPlan]:
  keep = {plans_lib.ROPE, plans_lib.scaled_id("yarn", cfg.static_scale), plans_lib.DYNAMIC_NTK,
          plans_lib.DYNAMIC_YARN, plans_lib.PI_MATCHED}
  return _subset(zero_shot_plans(cfg, train_length), keep)


def evaluate_retrieval(study: Study, extra: list[RunSpec], finetunes: list[RunSpec]) -> None:
  """Passkey grid, lost-in-the-middle and key-value lines for the first seeds' base models
  (zero-shot encodings), their fine-tunes (as trained) and the probe model if any; with a
  retrieval mix, the taught short tasks for those and for the absolute-position model under
  LongEmbed's extensions (its retrieval is what LongEmbed compares)."""
  cfg = study.cfg
  seeds = cfg.seeds[:cfg.retrieval_seeds]
  targets = []
  for seed in seeds:
    targets += [(base_run(cfg, seed), plan) for plan in retrieval_plans(cfg, cfg.train_length)]
  targets += [(spec, trained_plan(spec)) for spec in finetunes if spec.seed in seeds
              and spec.train_scale == cfg.finetune_scale and spec.name.startswith("ft_")]
  targets += [(spec, plan) for spec in extra if spec.kind == "passkey"
              for plan in retrieval_plans(cfg, spec.exp.train.seq_len)]
  taught = ("short_passkey", "mqar") if cfg.retrieval_mix else ()
  ape_targets = [(spec, plan) for spec in extra if spec.kind == "ape" and taught
                 for plan in plans_lib.ape_plans(cfg.train_length, pe.to_dict(spec.exp.encoding))]
  middle_depths = tuple(float(d) for d in np.linspace(0, 1, cfg.middle_depths))
  for spec, plan in targets + ape_targets:
    study.log(f"retrieval {spec.name} {plan.label}")
    if spec.kind != "ape":
      study.passkey(spec, plan, cfg.passkey_lengths, cfg.passkey_depths, cfg.passkey_samples)
      study.passkey(spec, plan, [cfg.middle_length], middle_depths, cfg.middle_samples, kind="middle")
    if spec.kind in ("base", "finetune", "ape"):  # the tasks the pretraining runs were taught
      for task in taught:
        study.passkey(spec, plan, cfg.short_retrieval_lengths, cfg.short_retrieval_depths,
                      cfg.short_retrieval_samples, kind=task)
    if spec.kind != "ape":
      study.passkey(spec, plan, cfg.lines_lengths, (0.5,), cfg.lines_samples, kind="lines")


def attention_plan_ids(cfg: StudyConfig) -> set[str]:
  return {plans_lib.ROPE, plans_lib.PI_MATCHED, plans_lib.scaled_id("yarn", cfg.static_scale), plans_lib.DYNAMIC_YARN}


def evaluate_attention(study: Study) -> None:
  cfg = study.cfg
  spec = base_run(cfg, cfg.seeds[0])
  for plan in _subset(zero_shot_plans(cfg), attention_plan_ids(cfg)):
    study.log(f"attention maps {plan.label}")
    study.attention(spec, plan, cfg.attention_scales)
  path = study.path("arrays", f"mean_qk_{spec.name}.npz")
  if not os.path.exists(path):
    run = study.trained(spec)
    docs = study.documents(cfg.choice_split)  # probes come from validation text
    rows = np.stack([d.tokens[:cfg.train_length] for d in docs])
    q, k = attention_maps.mean_qk(run.model, run.params, run.encoding, rows)
    np.savez_compressed(path, q=q, k=k)


def _choose_finetune_lr(study: Study) -> None:
  study.finetune_lr = study.choose_finetune_lr()


# (name, phase) in the order they run; each phase resumes from what results.jsonl holds.
def evaluate_baselines(study: Study) -> None:
  """The truncation line (each base model under plain RoPE at a fraction of its training length,
  on the same tokens) and the byte n-gram fitted on the training split."""
  cfg = study.cfg
  (rope,) = _subset(zero_shot_plans(cfg), {plans_lib.ROPE})
  for seed in cfg.seeds:
    study.perplexity(base_run(cfg, seed), rope, [cfg.truncation_scale])
  study.ngram_baseline(cfg.ngram_order, cfg.ngram_train_bytes)


PHASES: tuple[tuple[str, Callable[[Study], object]], ...] = (
    ("train base", lambda study: [study.train(base_run(study.cfg, s)) for s in study.cfg.seeds]),
    ("train extra", lambda study: [study.train(spec) for spec in extra_runs(study.cfg)]),
    ("longrope search", longrope.search),
    ("choose fine-tune lr", _choose_finetune_lr),
    ("fine-tune", lambda study: [study.train(spec) for spec in finetune_specs(study)]),
    ("perplexity", lambda study: evaluate_perplexity(study, extra_runs(study.cfg), finetune_specs(study))),
    ("baselines", evaluate_baselines),
    ("retrieval", lambda study: evaluate_retrieval(study, extra_runs(study.cfg), finetune_specs(study))),
    ("attention", evaluate_attention),
)


def run_study(cfg: StudyConfig, workdir: str, *, log: Callable[[str], None] = print) -> str:
  """Runs every phase (resuming what is done) and returns the path of report.md."""
  os.makedirs(workdir, exist_ok=True)
  save_config(cfg, workdir)
  study = Study(cfg, workdir, log=log)
  timings = {}
  for name, phase in PHASES:
    start = time.perf_counter()
    phase(study)
    timings[name] = time.perf_counter() - start
    log(f"phase {name}: {timings[name]:.0f} s")
  study.results.append([results_lib.make_row(
      "timing", f"timing|{time.time():.0f}", metrics={k: round(v, 1) for k, v in timings.items()},
      seed=None, config_hash=results_lib.config_hash(dataclasses.replace(cfg, base=None)),
      commit=study.commit)])
  return write_outputs(workdir, cfg)


def write_outputs(workdir: str, cfg: StudyConfig | None = None) -> str:
  """Draws the figures and writes report.md from what ``workdir`` holds; returns the report's path."""
  from rope_lab.study import figures, report_text  # pylint: disable=g-import-not-at-top
  cfg = cfg or read_study_config(workdir)
  rows = with_plan_ids(results_lib.read_rows(os.path.join(workdir, RESULTS_FILE)))
  drawn = figures.draw_study(rows, os.path.join(workdir, "arrays"), os.path.join(workdir, "figures"), cfg)
  return report_text.write_report(rows, drawn, cfg, os.path.join(workdir, "report.md"))
