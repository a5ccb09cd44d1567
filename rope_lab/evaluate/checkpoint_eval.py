"""Evaluate one trained checkpoint under a list of encodings; append rows to results.jsonl.

What ``experiments/evaluate.py`` runs: perplexity vs length on held-out documents, and
optionally passkey / key-value line retrieval, for every encoding plan, each applied to
the checkpoint zero-shot (the checkpoint's own encoding is the plan "trained").
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import flax
import numpy as np

from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab import results as results_lib
from rope_lab.errors import CheckpointError, ConfigError
from rope_lab.data import get_tokenizer, long_documents, task_grid
from rope_lab.evaluate import perplexity, retrieval
from rope_lab.evaluate.plans import EncodingPlan
from rope_lab.evaluate.runs import TrainedRun, load_run


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """Which measurements to take, on which documents."""

  lengths: tuple[int, ...]  # window lengths (tokens)
  stride_fraction: float = 0.5
  split: str = "test"
  max_docs: int = 2
  # Tokens scored per document, the same at every length (as in the study); None: the
  # larger of 8192 and the longest window.
  doc_tokens: int | None = None
  passkey_lengths: tuple[int, ...] = ()
  passkey_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  passkey_samples: int = 2
  lines_lengths: tuple[int, ...] = ()
  lines_samples: int = 4
  seed: int = 1  # seed of the synthetic retrieval examples

  def __post_init__(self):
    if not self.lengths and not self.passkey_lengths and not self.lines_lengths:
      raise ConfigError("nothing to evaluate: give lengths, passkey_lengths or lines_lengths")
    if self.doc_tokens is not None and self.lengths and self.doc_tokens < max(self.lengths):
      raise ConfigError(f"doc_tokens={self.doc_tokens} is shorter than the longest window {max(self.lengths)}")


SEED_MARK = "{seed}"  # in config.checkpoint: the swept seed (configs/evaluate.py)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One zero-shot evaluation from configs/evaluate.py: a checkpoint, an encoding, settings."""

  checkpoint: str
  plan: EncodingPlan
  settings: EvalSettings


def evaluation_from_config_dict(config) -> Evaluation:
  """configs/evaluate.py's ConfigDict -> an Evaluation; a ConfigError names a bad field."""
  from rope_lab import config as config_lib  # pylint: disable=g-import-not-at-top
  from rope_lab.errors import check  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate.plans import describe  # pylint: disable=g-import-not-at-top
  values = config.to_dict()
  checkpoint, seed = values.pop("checkpoint", None), values.pop("seed", 0)
  spec = {k: v for k, v in (values.pop("pe", None) or {}).items() if v is not None}
  label = values.pop("label", "") or ""
  check(isinstance(checkpoint, str) and checkpoint.strip() != "", "config.checkpoint",
        "a trained run directory (e.g. --config.checkpoint=/tmp/rope_lab/tiny)", checkpoint)
  check(isinstance(seed, int) and not isinstance(seed, bool), "config.seed", "an int", seed)
  check("name" in spec, "config.pe", "an encoding section with a name (configs/common.py's pe_config)", spec)
  try:
    plan = EncodingPlan.of(label or describe(spec), spec)
  except ValueError as e:
    raise ConfigError(f"config.pe: {e}") from None
  settings = config_lib.dataclass_from_mapping(EvalSettings, values, "config")
  return Evaluation(checkpoint.replace(SEED_MARK, str(seed)), plan, settings)


def trained_plan(run: TrainedRun) -> EncodingPlan:
  return EncodingPlan.of("trained", pe.to_dict(run.encoding))


@contextlib.contextmanager
def _parameters_fit(run: TrainedRun, plan: EncodingPlan):
  """An encoding whose parameters the checkpoint lacks (learned APE on a RoPE run) fails
  while tracing, before any compute; say so in rope_lab's words."""
  try:
    yield
  except flax.errors.ScopeParamNotFoundError as e:
    detail = str(e).split(" (https", 1)[0]
    raise CheckpointError(
        f"encoding {plan.label!r} needs parameters the checkpoint in {run.workdir} does not have "
        f"(trained with {run.encoding.name!r}; {detail}); "
        f"a learned position table only exists in runs trained with 'learned'") from None


def evaluate_checkpoint(workdir: str, plans: Sequence[EncodingPlan], settings: EvalSettings,
                        results_path: str, *, log: Callable[[str], None] = print) -> list[dict]:
  """Measures every plan on the checkpoint in ``workdir``; returns (and appends) the new rows.

  A measurement whose key and config hash ``results_path`` already holds is skipped (not
  measured again, not appended again), so re-running a command adds nothing twice.
  """
  run = load_run(workdir)
  results_file = results_lib.ResultsFile(results_path)
  done = {(row["key"], row["config_hash"]) for row in results_file.read()}
  tokenizer = get_tokenizer(run.exp.data)
  commit = results_lib.git_commit()
  train_length = run.train_length
  base_hash = {"run": config_lib.experiment_to_dict(run.exp), "step": run.step,
               "settings": dataclasses.asdict(settings)}
  common = dict(run=workdir, run_kind="checkpoint", train_length=train_length, step=run.step)
  seed = run.exp.train.seed
  rows = []
  docs = []
  if settings.lengths:
    doc_tokens = settings.doc_tokens or max(8192, max(settings.lengths))
    docs = long_documents(run.exp.data, split=settings.split, min_tokens=doc_tokens,
                          max_docs=settings.max_docs, max_tokens=doc_tokens, tokenizer=tokenizer)
  for plan in plans:
    chash = results_lib.config_hash({**base_hash, "plan": list(plan.spec)})
    for length in settings.lengths:
      key = f"ppl|{workdir}|{plan.label}|{length}|{settings.split}"
      if (key, chash) in done:
        log(f"{plan.label} {length}: already in {results_path}")
        continue
      encoding = plan.encoding(length, train_length)
      with _parameters_fit(run, plan):
        result = perplexity.perplexity_at_length(
            run.model, run.params, encoding, docs, length,
            stride=perplexity.stride_for(length, settings.stride_fraction), tokenizer=tokenizer)
      log(f"{plan.label} {length}: loss {result.loss:.4f}, {result.bits_per_byte:.4f} bits/byte")
      rows.append(results_lib.make_row(
          "perplexity", key, metrics=result.metrics(),
          seed=seed, config_hash=chash, commit=commit, plan=plan.label, encoding=pe.to_dict(encoding),
          length=length, scale=length / train_length, split=settings.split, stride=result.stride,
          docs=[d.doc_id for d in docs], **common))
    for task, lengths, depths, samples in (
        ("passkey", settings.passkey_lengths, settings.passkey_depths, settings.passkey_samples),
        ("lines", settings.lines_lengths, (0.5,), settings.lines_samples)):
      for length in lengths:
        if all((f"{task}|{workdir}|{plan.label}|{length}|{depth}", chash) in done for depth in depths):
          log(f"{plan.label} {task} {length}: already in {results_path}")
          continue
        examples = task_grid(task, tokenizer, [length], depths, seed=settings.seed, samples=samples)
        encoding = plan.encoding(length, train_length)
        with _parameters_fit(run, plan):
          scores = retrieval.score_examples(run.model, run.params, encoding, examples)
        for depth in depths:
          group = [s for s, d in zip(scores, np.repeat(depths, samples)) if d == depth]
          metrics = retrieval.summarize_scores(group)
          log(f"{plan.label} {task} {length} depth {depth:g}: accuracy {metrics['accuracy']:.2f}")
          rows.append(results_lib.make_row(
              task, f"{task}|{workdir}|{plan.label}|{length}|{depth}", metrics=metrics, seed=seed,
              config_hash=chash, commit=commit, plan=plan.label, encoding=pe.to_dict(encoding),
              length=length, scale=length / train_length, depth=float(depth), **common))
  results_file.append(rows)
  return rows
