"""Search LongRoPE rescale factors for a trained RoPE run, zero-shot, on validation documents.

  python -m experiments.longrope_search --config=configs/longrope_search.py \
      --config.base_workdir=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/longrope_s8

The objective is the perplexity of the frozen model at ``target_length`` on the first
``max_docs`` validation documents (never the test split), each candidate applied as
LongRoPE's long factor set with the attention factor sqrt(1 + ln s / ln L_orig). Stages,
each a resumable search in its own subdirectory of --workdir:

  stage1/  (optional, stage1_length) the search at an intermediate extension s1
  long/    the search at s = target_length / L_orig, seeded from the rescaled stage-1
           result (or from seed_factor_file)
  short/   (optional, short_search) the short set, searched at L_orig with the long set fixed

--workdir then holds longrope_factors.json (the factor file), longrope_encoding.json
(the same as an encoding spec for ``experiments.evaluate --encoding``), results.jsonl
(one row per generation and stage) and figures/. Ctrl-C or SIGTERM stops cleanly; the
same command resumes without re-scoring any candidate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rope_lab import checkpoint, pe
from rope_lab import config as config_lib
from rope_lab.data import DataConfig, DocumentError, get_tokenizer, long_documents
from rope_lab.evaluate import document_windows, load_run, read_experiment, stride_for
from rope_lab.model import ModelConfig
from rope_lab.search import scoring
from rope_lab.search.config import DEFAULT_N_HAT_CHOICES, SearchConfig, SearchConfigError
from rope_lab.search.evolution import FACTOR_FILE, SearchResult, run_search, write_factor_file
from rope_lab.search.plots import plot_convergence, plot_factors
from rope_lab.search.seeds import rescale_factors
from rope_lab.search.state import RESULTS_FILE, read_result_rows

FACTOR_SPEC_FILE = "longrope_encoding.json"
STAGE_KIND = "longrope_search"


class SearchSetupError(ValueError):
  """The search cannot start with these settings or inputs; the message names the field."""


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """What configs/longrope_search.py sets; see the field comments there."""

  base_workdir: str | None = None
  target_length: int = 1024
  original_length: int | None = None
  stage1_length: int | None = None
  short_search: bool = False
  short_max_factor: float | None = None
  max_docs: int = 2
  doc_tokens: int | None = None
  stride_fraction: float = 0.5
  population: int = 64
  generations: int = 40
  mutations: int = 16
  crossovers: int = 16
  top_k: int = 32
  mutation_prob: float = 0.3
  crossover_prob: float = 0.3
  grid_step: float = 0.01
  piecewise: bool = False
  search_n_hat: bool = False
  n_hat: int = 0
  n_hat_choices: tuple[int, ...] = DEFAULT_N_HAT_CHOICES
  seeds: tuple[str, ...] = ("pi", "ntk", "yarn")
  seed: int = 0
  seed_factor_file: str | None = None
  rescale_mode: str = "log"
  candidates_per_call: int | None = None
  chunk_size: int = 128


def settings_from_config_dict(config) -> SearchSettings:
  return config_lib.dataclass_from_mapping(SearchSettings, config.to_dict(), "config")


# ----------------------------------------------------------------------------- the base model


@dataclasses.dataclass(frozen=True)
class BaseModel:
  """A frozen model to search factors for; ``restore_params`` is called only once all inputs check out."""

  model: ModelConfig
  data: DataConfig  # the validation documents come from its dataset
  encoding: pe.Encoding  # the encoding it was trained with (plain RoPE)
  train_length: int
  restore_params: Callable[[], Any]


def base_model_from_workdir(workdir: str | None) -> BaseModel:
  """The trained run in ``workdir``; errors name config.base_workdir and say how to make one."""
  train_first = ("train one first, e.g. python -m experiments.train --config=configs/tiny_cpu.py "
                 "--workdir=/tmp/rope_lab/tiny, then pass --config.base_workdir=/tmp/rope_lab/tiny")
  if not workdir:
    raise SearchSetupError(f"config.base_workdir is not set: the search needs a trained run; {train_first}")
  try:
    exp = read_experiment(workdir)
  except FileNotFoundError as e:
    raise SearchSetupError(f"config.base_workdir={workdir!r} holds no trained model ({e}); {train_first}") from None
  try:  # (latest_step_of's own message speaks of config.init_from)
    checkpoint.latest_step_of(workdir)
  except FileNotFoundError:
    raise SearchSetupError(f"config.base_workdir={workdir!r} holds no trained model: no committed checkpoint "
                           f"in {checkpoint.checkpoint_directory(workdir)}; {train_first}") from None
  return BaseModel(model=exp.model, data=exp.data, encoding=exp.encoding, train_length=exp.train.seq_len,
                   restore_params=lambda: load_run(workdir).params)


# ----------------------------------------------------------------------------- stages


@dataclasses.dataclass(frozen=True)
class Stage:
  """One search: its candidates (SearchConfig), where they are scored, and how."""

  name: str  # subdirectory of the work directory: stage1, long or short
  length: int  # window length the candidates are scored at
  search: SearchConfig
  attention_factor: float  # on q and k, from the extension of the LongRoPE model being searched


def plan_stages(settings: SearchSettings, space: scoring.RotarySpace, original_length: int,
                candidates_per_call: int = 1) -> tuple[Stage, ...]:
  """The stages the settings ask for; every SearchConfig is built (and checked) here."""
  target = settings.target_length / original_length
  if not target > 1:
    raise SearchSetupError(
        f"target factor s = config.target_length / original length = {settings.target_length} / "
        f"{original_length} = {target:g} must be > 1: LongRoPE's long factors apply only beyond the "
        f"original length")
  common = dict(rotary_pairs=space.pairs, original_length=original_length, rope_base=space.base,
                grid_step=settings.grid_step, population=settings.population,
                generations=settings.generations, mutations=settings.mutations,
                crossovers=settings.crossovers, top_k=settings.top_k,
                mutation_prob=settings.mutation_prob, crossover_prob=settings.crossover_prob,
                piecewise=settings.piecewise, seed=settings.seed,
                # One scorer call per chunk: scores are cached after each, so an interruption
                # loses at most one chunk.
                score_batch_size=candidates_per_call)
  long_search = dict(common, search_n_hat=settings.search_n_hat, n_hat=settings.n_hat,
                     n_hat_choices=settings.n_hat_choices, seeds=settings.seeds)
  stages = []
  if settings.stage1_length is not None:
    if not original_length < settings.stage1_length < settings.target_length:
      raise SearchSetupError(f"config.stage1_length must lie between the original length "
                             f"{original_length} and target_length {settings.target_length}, got "
                             f"{settings.stage1_length}")
    first = settings.stage1_length / original_length
    stages.append(Stage("stage1", settings.stage1_length, SearchConfig(target_factor=first, **long_search),
                        scoring.attention_factor_for(first, original_length)))
  attention = scoring.attention_factor_for(target, original_length)
  stages.append(Stage("long", settings.target_length, SearchConfig(target_factor=target, **long_search),
                      attention))
  if settings.short_search:
    short_max = settings.short_max_factor or target
    # n_hat is the long result's (one n_hat serves both sets); 0 stands in until it is known.
    stages.append(Stage("short", original_length, SearchConfig(target_factor=short_max, seeds=("ones", "pi"),
                                                                 **common), attention))
  return tuple(stages)


def near_size_of(search: SearchConfig) -> int:
  """Unscaled rows every candidate of a stage can need: the largest n_hat it may draw."""
  return max(search.n_hat_choices) if search.search_n_hat else search.n_hat


def validation_documents(data: DataConfig, settings: SearchSettings, tokenizer):
  """The first max_docs validation documents of at least doc_tokens (default target_length) tokens."""
  tokens = settings.doc_tokens or settings.target_length
  if tokens < settings.target_length:
    raise SearchSetupError(f"config.doc_tokens={tokens} is shorter than target_length {settings.target_length}")
  try:
    return long_documents(data, split="validation", min_tokens=tokens, max_docs=settings.max_docs,
                          max_tokens=tokens, tokenizer=tokenizer)
  except DocumentError as e:
    raise SearchSetupError(f"the validation documents are shorter than the target length {tokens} "
                           f"tokens (config.target_length / config.doc_tokens): {e}") from None


def seed_from_file(path: str, space: scoring.RotarySpace, stage: Stage, mode: str):
  """A factor file's long set mapped into [1, s] of ``stage`` (rescaled if found at another s)."""
  encoding = pe.load_factors(path, head_dim=space.head_dim)  # a different head_dim is an error
  if abs(encoding.base - space.base) > 1e-9 * space.base:
    raise SearchSetupError(f"config.seed_factor_file {path}: factors for rotary base {encoding.base}, "
                           f"the model uses {space.base}")
  found_at = encoding.factor or max(encoding.long_factor)
  target = stage.search.target_factor
  if found_at > 1 and abs(found_at - target) > 1e-12:
    return rescale_factors(encoding.long_factor, target, from_factor=found_at, mode=mode)
  return rescale_factors(encoding.long_factor, target, mode="clip")


# ----------------------------------------------------------------------------- outputs


def append_stage_rows(workdir: str, stage: str, history) -> None:
  """Each generation row once in <workdir>/results.jsonl, tagged with its stage (resumes add no copies)."""
  logged = {(row.get("stage"), row.get("generation"), row.get("seed"))
            for row in read_result_rows(workdir) if row.get("kind") == STAGE_KIND}
  with open(os.path.join(workdir, RESULTS_FILE), "a") as f:
    for row in history:
      if (stage, row["generation"], row["seed"]) not in logged:
        f.write(json.dumps({**row, "stage": stage}) + "\n")


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
  long: SearchResult  # at the target length
  stage1: SearchResult | None
  short: SearchResult | None
  factor_file: str
  encoding: pe.Encoding  # the LongRoPE encoding written


def write_outputs(workdir: str, stages: dict, results: dict, space: scoring.RotarySpace) -> SearchOutcome:
  """The factor file, the encoding spec, the figures; returns what was written."""
  long, short = results["long"], results.get("short")
  search = stages["long"].search
  short_factors = None if short is None else short.factors
  factor_file = os.path.join(workdir, FACTOR_FILE)
  write_factor_file(factor_file, long, search, short_factors, head_dim=space.head_dim,
                    layout=space.layout)
  # The encoding spec (for experiments.evaluate --encoding) carries the same factors and layout.
  encoding = scoring.longrope_encoding(space, long.factors, original_length=search.original_length,
                                       target_factor=search.target_factor, n_hat=long.n_hat,
                                       short_factor=short_factors)
  spec = {**pe.to_dict(encoding), "label": "LongRoPE (searched)"}
  with open(os.path.join(workdir, FACTOR_SPEC_FILE), "w") as f:
    json.dump(spec, f, indent=1)
  figures = os.path.join(workdir, "figures")
  os.makedirs(figures, exist_ok=True)
  plot_factors(os.path.join(figures, "longrope_factors.png"), long.factors, search, short_factors=short_factors)
  for name, result in results.items():
    plot_convergence(os.path.join(figures, f"convergence_{name}.png"), result.history)
  return SearchOutcome(long=long, stage1=results.get("stage1"), short=short, factor_file=factor_file,
                       encoding=encoding)


# ----------------------------------------------------------------------------- the search


def stage_inputs(name: str, stages: dict, results: dict, file_seeds: list, settings: SearchSettings):
  """(SearchConfig, seed factor vectors) of a stage, given the stages already done."""
  stage = stages[name]
  if name == "short":  # one n_hat serves both sets: the long result's
    return dataclasses.replace(stage.search, n_hat=results["long"].n_hat), []
  if name == "long" and "stage1" in results:
    return stage.search, [rescale_factors(results["stage1"].factors, stage.search.target_factor,
                                          from_factor=stages["stage1"].search.target_factor,
                                          mode=settings.rescale_mode)]
  return stage.search, file_seeds  # the first stage


def run_longrope_search(settings: SearchSettings, workdir: str, *, base: BaseModel | None = None,
                        log: Callable[[str], None] = print, devices=None) -> SearchOutcome:
  """Checks every input, then runs (or resumes) the stages and writes the outputs.

  ``base`` defaults to the run in settings.base_workdir; its parameters are restored only
  after the settings, the documents and any seed file have been checked.
  """
  base = base or base_model_from_workdir(settings.base_workdir)
  original = settings.original_length or base.train_length
  space = scoring.rotary_space(base.encoding, base.model.head_dim)
  devices = list(jax.devices() if devices is None else devices)
  per_call = settings.candidates_per_call or scoring.default_candidates_per_call(devices)
  per_call = -(-per_call // len(devices)) * len(devices)  # the scorer splits each call over the devices
  stages = {stage.name: stage for stage in plan_stages(settings, space, original, per_call)}
  tokenizer = get_tokenizer(base.data)
  documents = validation_documents(base.data, settings, tokenizer)
  first = next(iter(stages.values()))
  file_seeds = ([seed_from_file(settings.seed_factor_file, space, first, settings.rescale_mode)]
                if settings.seed_factor_file else [])
  log(f"{len(documents)} validation documents ({', '.join(d.doc_id for d in documents)}); stages: "
      + ", ".join(f"{s.name} s={s.search.target_factor:g} at {s.length} tokens" for s in stages.values()))
  params = base.restore_params()
  os.makedirs(workdir, exist_ok=True)
  results = {}
  for name, stage in stages.items():
    search, seeds = stage_inputs(name, stages, results, file_seeds, settings)
    windows = document_windows(documents, stage.length, stride_for(stage.length, settings.stride_fraction),
                               tokenizer.pad_id)
    setup = scoring.ScoringSetup(length=stage.length, attention_factor=stage.attention_factor,
                                 near_size=near_size_of(search), candidates_per_call=per_call,
                                 chunk_size=settings.chunk_size)
    scorer = scoring.make_population_scorer(base.model, params, windows, space, setup, devices=devices)
    log(f"[{name}] s={search.target_factor:g}, {len(windows)} windows of {stage.length} tokens")
    stage_log = lambda message, name=name: log(f"[{name}] {message}")
    results[name] = run_search(search, scorer, os.path.join(workdir, name), seed_factors=seeds, log=stage_log)
    append_stage_rows(workdir, name, results[name].history)
  outcome = write_outputs(workdir, stages, results, space)
  log(f"best perplexity at {settings.target_length} tokens: {outcome.long.perplexity:.4f} "
      f"(n_hat {outcome.long.n_hat}); factors in {outcome.factor_file}")
  return outcome


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt():
  """SIGTERM raises KeyboardInterrupt, so a scheduler's stop unwinds like Ctrl-C.

  The search state is written atomically after each generation and scores after each
  scorer call, so wherever the exception lands the next run resumes from the last of them.
  """
  def interrupt(signum, frame):
    del signum, frame
    raise KeyboardInterrupt("SIGTERM")

  previous = signal.signal(signal.SIGTERM, interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- command line

INTERRUPTED_EXIT_CODE = 130


def main(argv, config, workdir: str) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  try:
    settings = settings_from_config_dict(config)
    with sigterm_as_keyboard_interrupt():
      run_longrope_search(settings, workdir, log=lambda message: print(message, flush=True))
  except (SearchSetupError, SearchConfigError, config_lib.ConfigError, pe.ConfigError, FileNotFoundError) as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  except KeyboardInterrupt:
    sys.stderr.write(f"interrupted; run the same command again to resume from {workdir}\n")
    return INTERRUPTED_EXIT_CODE
  return 0


if __name__ == "__main__":
  # Flags are defined only when run as a program, so tests can import the library part.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/longrope_search.py[:variant]",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Search directory: state, factors, results, figures.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(lambda argv: sys.exit(main(argv, _CONFIG.value, _WORKDIR.value)))
