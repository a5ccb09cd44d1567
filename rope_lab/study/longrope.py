"""LongRoPE inside the study: the factor search on the first seed's base model, and its plan.

The search (rope_lab.search, Ding et al. 2024) looks for per-pair rescale factors for the
target length static_scale x L on validation documents only, and keeps its resumable state
in ``<workdir>/longrope/<run>_<hash>/`` (``search_dir``). Its outcome is recorded as one
``longrope_search`` row; once that row is there, a re-run of the study does not search again.
The factors found are then one more zero-shot plan ("LongRoPE s=<s>") evaluated on every seed's
base model. LongRoPE searches per model; applying seed 0's factors to the other seeds is a
cheaper protocol, and the report says so.
"""

from __future__ import annotations

import json
import os
import time

from rope_lab.errors import check
from rope_lab.evaluate import plans as plans_lib
from rope_lab.search import base_model_from_workdir, run_longrope_search
from rope_lab.search.outputs import FACTOR_SPEC_FILE
from rope_lab.search.settings import SearchRun
from rope_lab.study.config import StudyConfig
from rope_lab.study.runs import RunSpec, base_run

SEARCH_DIR = "longrope"
ROW_KIND = "longrope_search"


def plan_id(cfg: StudyConfig) -> str:
  return plans_lib.scaled_id("longrope", cfg.static_scale)


def target_length(cfg: StudyConfig) -> int:
  length = cfg.train_length * cfg.static_scale
  check(float(length).is_integer(), "config.static_scale",
        f"a scale whose target static_scale x {cfg.train_length} is a whole number of tokens (LongRoPE's "
        "search length)", cfg.static_scale)
  return int(length)


def search_run(cfg: StudyConfig, base_workdir: str) -> SearchRun:
  """The search the study asks for: its budget from the config, everything else the search's defaults
  (seeds PI / NTK / YaRN, 0.01 grid, probabilities 0.3, one stage at the target length)."""
  return SearchRun(
      base_workdir=base_workdir, target_length=target_length(cfg), original_length=cfg.train_length,
      max_docs=cfg.longrope_docs, stride_fraction=cfg.stride_fraction,
      evolution={"population": cfg.longrope_population, "generations": cfg.longrope_generations,
                 "mutations": cfg.longrope_mutations, "crossovers": cfg.longrope_crossovers,
                 "top_k": cfg.longrope_top_k})


def _search_key(spec: RunSpec, cfg: StudyConfig) -> str:
  return f"{ROW_KIND}|{spec.name}|{target_length(cfg)}"


def _settings(run: SearchRun) -> dict:
  return {"target_length": run.target_length, "max_docs": run.max_docs, "stride_fraction": run.stride_fraction,
          "split": "validation", **dict(run.evolution)}


def search_dir(study, spec: RunSpec, run: SearchRun) -> str:
  """The search's resumable state: one directory per model and settings, so that a retrained base
  model or another budget never resumes from scores of another search. More generations (the
  only setting the search may resume with) continue in the same directory."""
  settings = {k: v for k, v in _settings(run).items() if k != "generations"}
  return study.path(SEARCH_DIR, f"{spec.name}_{study.measure_hash(spec, **settings)[:10]}")


def _first_seed_search(study) -> tuple[RunSpec, SearchRun]:
  spec = base_run(study.cfg, study.cfg.seeds[0])
  return spec, search_run(study.cfg, study.path("runs", spec.name))


def search(study) -> None:
  """The phase: searches (or resumes the search) unless its row is already recorded."""
  cfg = study.cfg
  if not cfg.longrope_search:
    return
  spec, run = _first_seed_search(study)
  chash = study.measure_hash(spec, **_settings(run))
  key = _search_key(spec, cfg)
  workdir = search_dir(study, spec, run)
  if (key, chash) in study.done and os.path.exists(os.path.join(workdir, FACTOR_SPEC_FILE)):
    return
  study.log(f"LongRoPE search on {spec.name} for {run.target_length} tokens in {workdir}")
  start = time.perf_counter()
  outcome = run_longrope_search(run, workdir, base=base_model_from_workdir(run.base_workdir), log=study.log)
  best = outcome.long
  study.record(ROW_KIND, key, chash, spec, {
      "perplexity": best.perplexity, "candidates": best.evaluated, "generations": best.generation,
      "seconds": round(time.perf_counter() - start, 1)}, split="validation", length=run.target_length,
      scale=run.target_length / cfg.train_length, plan_id=plan_id(cfg), n_hat=best.n_hat,
      factors=list(best.factors), budget=dict(run.evolution), docs_per_candidate=run.max_docs)


def plans(study) -> list[plans_lib.EncodingPlan]:
  """The searched factors as a zero-shot plan, or none when the search is off."""
  cfg = study.cfg
  if not cfg.longrope_search:
    return []
  path = os.path.join(search_dir(study, *_first_seed_search(study)), FACTOR_SPEC_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    spec = json.load(f)
  spec = {k: v for k, v in spec.items() if k not in ("id", "label")}
  return [plans_lib.EncodingPlan.of(f"LongRoPE s={cfg.static_scale:g}", spec, plan_id(cfg))]
