"""The stages of a LongRoPE search on a trained model, planned from the run settings.

  stage1  (optional, stage1_length) the search at an intermediate extension s1
  long    the search at s = target_length / L_orig, seeded from the rescaled stage-1
          result (or from a factor file)
  short   (optional, short_search) the short set, searched at L_orig with the long set fixed

Each stage's SearchConfig is built here from the settings' ``evolution`` values, so the
hyperparameters are declared once, by SearchConfig, and checked before any compute.
"""

from __future__ import annotations

import dataclasses

from rope_lab import pe
from rope_lab.errors import check
from rope_lab.search import scoring
from rope_lab.search.config import SearchConfig, SearchSetupError
from rope_lab.search.seeds import rescale_factors
from rope_lab.search.settings import SearchRun


@dataclasses.dataclass(frozen=True)
class Stage:
  """One search: its candidates (SearchConfig), where they are scored, and how."""

  name: str  # subdirectory of the work directory: stage1, long or short
  length: int  # window length the candidates are scored at
  search: SearchConfig
  attention_factor: float  # on q and k, from the extension of the LongRoPE model being searched


def plan_stages(run: SearchRun, space: scoring.RotarySpace, original_length: int,
                candidates_per_call: int = 1) -> tuple[Stage, ...]:
  """The stages the settings ask for; every SearchConfig is built (and checked) here."""
  target = run.target_length / original_length
  check(target > 1, f"target factor s = config.target_length / original length = {run.target_length} / "
        f"{original_length} = {target:g}", "> 1: LongRoPE's long factors apply only beyond the original length",
        target, SearchSetupError)
  # One scorer call per chunk: scores are cached after each, so an interruption loses at most one chunk.
  common = dict(run.evolution, rotary_pairs=space.pairs, original_length=original_length, rope_base=space.base,
                score_batch_size=candidates_per_call)
  stages = []
  if run.stage1_length is not None:
    if not original_length < run.stage1_length < run.target_length:
      raise SearchSetupError(f"config.stage1_length must lie between the original length {original_length} "
                             f"and target_length {run.target_length}, got {run.stage1_length}")
    first = run.stage1_length / original_length
    stages.append(Stage("stage1", run.stage1_length, SearchConfig(target_factor=first, **common),
                        scoring.attention_factor_for(first, original_length)))
  attention = scoring.attention_factor_for(target, original_length)
  stages.append(Stage("long", run.target_length, SearchConfig(target_factor=target, **common), attention))
  if run.short_search:
    # n_hat is the long result's (one n_hat serves both sets; stage_inputs sets it), and the
    # short set starts from no interpolation.
    short = {k: v for k, v in common.items() if k not in ("search_n_hat", "n_hat", "n_hat_choices", "seeds")}
    stages.append(Stage("short", original_length, SearchConfig(target_factor=run.short_max_factor or target,
                                                               seeds=("ones", "pi"), **short), attention))
  return tuple(stages)


def near_size_of(search: SearchConfig) -> int:
  """Unscaled rows every candidate of a stage can need: the largest n_hat it may draw."""
  return max(search.n_hat_choices) if search.search_n_hat else search.n_hat


def seed_from_file(path: str, space: scoring.RotarySpace, stage: Stage, mode: str):
  """A factor file's long set mapped into [1, s] of ``stage`` (rescaled if found at another s)."""
  encoding = pe.load_factors(path, head_dim=space.head_dim)  # a different head_dim is an error
  check(abs(encoding.base - space.base) <= 1e-9 * space.base, f"config.seed_factor_file {path}: the rotary base",
        f"the model's {space.base}", encoding.base, SearchSetupError)
  found_at = encoding.factor or max(encoding.long_factor)
  target = stage.search.target_factor
  if found_at > 1 and abs(found_at - target) > 1e-12:
    return rescale_factors(encoding.long_factor, target, from_factor=found_at, mode=mode)
  return rescale_factors(encoding.long_factor, target, mode="clip")


def stage_inputs(name: str, stages: dict, results: dict, file_seeds: list, rescale_mode: str):
  """(SearchConfig, seed factor vectors) of a stage, given the stages already done."""
  stage = stages[name]
  if name == "short":  # one n_hat serves both sets: the long result's
    return dataclasses.replace(stage.search, n_hat=results["long"].n_hat), []
  if name == "long" and "stage1" in results:
    return stage.search, [rescale_factors(results["stage1"].factors, stage.search.target_factor,
                                          from_factor=stages["stage1"].search.target_factor, mode=rescale_mode)]
  return stage.search, file_seeds  # the first stage
