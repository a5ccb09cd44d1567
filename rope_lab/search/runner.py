"""A LongRoPE search on a trained run: check every input, then run (or resume) the stages.

The objective is the perplexity of the frozen model at ``target_length`` on the first
``max_docs`` validation documents (never the test split), each candidate applied as
LongRoPE's long factor set with the attention factor sqrt(1 + ln s / ln L_orig). Each stage
(rope_lab.search.stages) is a resumable search in its own subdirectory of the work
directory; the outputs are listed in rope_lab.search.outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable
from typing import Any

import jax

from rope_lab import pe

from rope_lab.training import checkpoint
from rope_lab.data import DataConfig, DocumentError, get_tokenizer, long_documents
from rope_lab.evaluate import document_windows, load_run, read_experiment, stride_for
from rope_lab.model.skeleton import ModelConfig
from rope_lab.search import scoring
from rope_lab.search.config import SearchSetupError
from rope_lab.search.evolution import run_search
from rope_lab.search.outputs import SearchOutcome, append_stage_rows, write_outputs
from rope_lab.search.settings import SearchRun
from rope_lab.search.stages import near_size_of, plan_stages, seed_from_file, stage_inputs


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


def validation_documents(data: DataConfig, run: SearchRun, tokenizer):
  """The first max_docs validation documents of at least doc_tokens (default target_length) tokens."""
  tokens = run.doc_tokens or run.target_length
  if tokens < run.target_length:
    raise SearchSetupError(f"config.doc_tokens={tokens} is shorter than target_length {run.target_length}")
  try:
    return long_documents(data, split="validation", min_tokens=tokens, max_docs=run.max_docs,
                          max_tokens=tokens, tokenizer=tokenizer)
  except DocumentError as e:
    raise SearchSetupError(f"the validation documents are shorter than the target length {tokens} "
                           f"tokens (config.target_length / config.doc_tokens): {e}") from None


def run_longrope_search(run: SearchRun, workdir: str, *, base: BaseModel | None = None,
                        log: Callable[[str], None] = print, devices=None) -> SearchOutcome:
  """Checks every input, then runs (or resumes) the stages and writes the outputs.

  ``base`` defaults to the run in run.base_workdir; its parameters are restored only
  after the settings, the documents and any seed file have been checked.
  """
  base = base or base_model_from_workdir(run.base_workdir)
  original = run.original_length or base.train_length
  space = scoring.rotary_space(base.encoding, base.model.head_dim)
  devices = list(jax.devices() if devices is None else devices)
  per_call = run.candidates_per_call or scoring.default_candidates_per_call(devices)
  per_call = -(-per_call // len(devices)) * len(devices)  # the scorer splits each call over the devices
  stages = {stage.name: stage for stage in plan_stages(run, space, original, per_call)}
  tokenizer = get_tokenizer(base.data)
  documents = validation_documents(base.data, run, tokenizer)
  first = next(iter(stages.values()))
  file_seeds = [seed_from_file(run.seed_factor_file, space, first, run.rescale_mode)] if run.seed_factor_file else []
  log(f"{len(documents)} validation documents ({', '.join(d.doc_id for d in documents)}); stages: "
      + ", ".join(f"{s.name} s={s.search.target_factor:g} at {s.length} tokens" for s in stages.values()))
  params = base.restore_params()
  os.makedirs(workdir, exist_ok=True)
  results = {}
  for name, stage in stages.items():
    search, seeds = stage_inputs(name, stages, results, file_seeds, run.rescale_mode)
    windows = document_windows(documents, stage.length, stride_for(stage.length, run.stride_fraction),
                               tokenizer.pad_id)
    setup = scoring.ScoringSetup(length=stage.length, attention_factor=stage.attention_factor,
                                 near_size=near_size_of(search), candidates_per_call=per_call,
                                 chunk_size=run.chunk_size)
    scorer = scoring.make_population_scorer(base.model, params, windows, space, setup, devices=devices)
    log(f"[{name}] s={search.target_factor:g}, {len(windows)} windows of {stage.length} tokens")
    stage_log = lambda message, name=name: log(f"[{name}] {message}")
    results[name] = run_search(search, scorer, os.path.join(workdir, name), seed_factors=seeds, log=stage_log)
    append_stage_rows(workdir, name, results[name].history)
  outcome = write_outputs(workdir, stages, results, space)
  log(f"best perplexity at {run.target_length} tokens: {outcome.long.perplexity:.4f} "
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
