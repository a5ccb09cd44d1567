"""RULER on any model the lab loads, under any encoding: scoring, intervals, effective length.

``run(model, tokenizer, encoding, tasks, lengths, samples, seed)`` makes each task's
haystacks (``ruler_tasks``), prefills each context once into the key-value cache and
continues a copy of it for every query asked of it (``generate.prefill``). Each query is
scored in one or both modes:

* ``"greedy"`` (RULER's): up to the task's ``tokens_to_generate`` greedy tokens after the
  answer prefix, scored by RULER's metric (string_match_all: the share of the answers the
  text contains; string_match_part: whether it contains any), 0-100;
* ``"teacher_forced"``: whether every token of the answers written as one continuation
  (``Query.target``) is the argmax given the prompt and the answer tokens before it: exact
  match of greedy decoding against that continuation, in one forward over query + answer.

It returns one row per query, with its haystack's id. Queries on one haystack share its
noise, so every interval here is a bootstrap over haystacks (all queries of a drawn
haystack come along), and each cell says how many haystacks and queries it holds.

Effective context length, per method, from the task-averaged score at each length: RULER's
(the longest length such that it and every shorter evaluated length score above a
threshold, 85.6: Llama-2-7B at 4K) and a relative one (at least 85% of the model's own
average at the lengths inside its training length). Their intervals are the same bootstrap
carried through the definition.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rope_lab import pe
from rope_lab.errors import ConfigError, check
from rope_lab.evaluate import ruler_tasks
from rope_lab.evaluate.plans import EncodingPlan
from rope_lab.evaluate.ruler_tasks import METRICS, TASKS, Options, Sample, postprocess
from rope_lab.model import generate
from rope_lab.study.statistics import Interval, block_resample_indices

MODES = ("greedy", "teacher_forced")
RULER_THRESHOLD = 85.6  # Llama-2-7B's average score at 4K tokens, RULER's bar
RELATIVE_FRACTION = 0.85
DEFAULT_RESAMPLES = 2000


# ----------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """What ``load_model`` returns: a model ``generate`` runs, its tokenizer and training length."""

  model: Any  # config, params, encoding
  tokenizer: Any
  training_length: int | None


def load_model(spec: str) -> LoadedModel:
  """``spec``: a training run's work directory, ``hf:DIR``, ``gguf:FILE`` or ``smollm2`` (the
  asset store's SmolLM2-135M GGUF)."""
  from rope_lab.data.tokenizers import GGUF_PREFIX, HF_PREFIX, HFTokenizer, load_tokenizer_spec  # pylint: disable=g-import-not-at-top
  if spec == "smollm2":
    from rope_lab.data import assets  # pylint: disable=g-import-not-at-top
    spec = GGUF_PREFIX + assets.smollm2_gguf()
  if spec.startswith((HF_PREFIX, GGUF_PREFIX)):
    from rope_lab.interop import gguf, hf  # pylint: disable=g-import-not-at-top
    path = spec.split(":", 1)[1]
    loaded = gguf.load(path) if spec.startswith(GGUF_PREFIX) else hf.load(path)
    trained = loaded.hf_config.get("max_position_embeddings")
    return LoadedModel(loaded, HFTokenizer(spec), int(trained) if trained else None)
  from rope_lab.evaluate import runs  # pylint: disable=g-import-not-at-top
  run_ = runs.load_run(spec)
  return LoadedModel(generate.Model(run_.model, run_.params, run_.encoding), load_tokenizer_spec(spec),
                     run_.train_length)


def _encoding_at(model, encoding, length: int, training_length: int | None) -> pe.Encoding:
  if encoding is None:
    return model.encoding
  if isinstance(encoding, EncodingPlan):
    if encoding.is_matched:
      check(training_length is not None, f"ruler: encoding {encoding.label!r}", "given a training_length (it is "
            "'matched' to the length)", training_length)
    return encoding.encoding(length, training_length or 1)
  return encoding


# ----------------------------------------------------------------------------- scoring one haystack


def _stop_tokens(tokenizer) -> tuple[int, ...]:
  eod = getattr(tokenizer, "eod_id", None)
  return () if eod is None else (int(eod),)


def score_sample(model, tokenizer, sample: Sample, modes: Sequence[str] = ("greedy",),
                 max_new_tokens: int | None = None) -> list[dict]:
  """One row per query of ``sample``: its context prefilled once, each query from a copy.
  ``max_new_tokens`` caps greedy decoding below the task's budget (quick checks; not RULER's)."""
  check(modes and set(modes) <= set(MODES), "ruler: modes", f"a non-empty subset of {MODES}", modes)
  prefix = generate.prefill(model, sample.context_ids, sample.tokens)
  metric, stop = METRICS[TASKS[sample.task].metric], _stop_tokens(tokenizer)
  rows = []
  for i, query in enumerate(sample.queries):
    row = {"task": sample.task, "length": sample.length, "haystack": sample.haystack_id, "query": i,
           "queries": len(sample.queries), "sample": sample.index, "seed": sample.seed,
           "tokens": len(sample.context_ids) + len(query.ids), "answers": list(query.answers),
           "depths": [round(n.depth, 4) for n in sample.needles], "haystack_size": sample.haystack_size}
    if "greedy" in modes:
      budget = min(sample.tokens_to_generate, max_new_tokens or sample.tokens_to_generate)
      new = generate.generate_after(model, prefix, query.ids, budget, stop_tokens=stop)
      text = tokenizer.decode([t for t in new if t not in stop])
      row.update(prediction=text, score=100.0 * metric(postprocess(text), query.answers))
    if "teacher_forced" in modes:
      row.update(teacher_forced(model, prefix, query))
    rows.append(row)
  return rows


def teacher_forced(model, prefix: generate.Prefix, query: ruler_tasks.Query) -> dict:
  """Exact match, token accuracy and log-likelihood of ``query.target`` after the prefix and the
  query, from one forward over query + target."""
  suffix = np.concatenate([query.ids, query.target_ids])
  positions = np.arange(len(query.ids) - 1, len(suffix) - 1)
  logits = generate.prefix_logits(model, prefix, suffix, positions).astype(np.float64)
  hits = logits.argmax(-1) == query.target_ids
  peak = logits.max(-1)
  log_z = peak + np.log(np.exp(logits - peak[:, None]).sum(-1))
  picked = logits[np.arange(len(positions)), query.target_ids]
  return {"exact": bool(hits.all()), "token_accuracy": float(hits.mean()),
          "answer_logprob": float((picked - log_z).sum())}


def run(model, tokenizer, encoding, tasks: Sequence[str], lengths: Sequence[int], samples: int, seed: int = 0, *,
        modes: Sequence[str] = ("greedy",), options: Options = Options(), training_length: int | None = None,
        method: str = "", log: Callable[[str], None] | None = None,
        skip: Callable[[str], bool] = lambda haystack_id: False, max_new_tokens: int | None = None) -> list[dict]:
  """Per-query rows of RULER's ``tasks`` at ``lengths`` (tokens of ``tokenizer``), ``samples``
  haystacks per (task, length), on ``model`` (anything with config, params and encoding: a
  ``load_model(...).model``, an ``interop`` model) under ``encoding`` (a ``pe.Encoding``, an
  ``EncodingPlan`` resolved at each length, or None: the model's own), labelled ``method``.
  Haystacks whose id ``skip`` accepts (already measured) are made but not scored;
  ``max_new_tokens``: as ``score_sample``'s."""
  check(tasks and all(t in TASKS for t in tasks), "ruler: tasks", f"names from {sorted(TASKS)}", tasks)
  check(lengths and all(isinstance(n, int) and n > 0 for n in lengths), "ruler: lengths", "positive ints", lengths)
  rows = []
  for length in lengths:
    at = generate.Model(model.config, model.params, _encoding_at(model, encoding, length, training_length))
    for task in tasks:
      made = [s for s in ruler_tasks.make_samples(task, tokenizer, length, samples, seed, options)
              if not skip(s.haystack_id)]
      task_rows = [row for sample in made for row in score_sample(at, tokenizer, sample, modes, max_new_tokens)]
      for row in task_rows:
        row.update(method=method, encoding=pe.to_dict(at.encoding))
      rows.extend(task_rows)
      if log is not None and task_rows:
        log(f"  {method or 'model'} {task} {length}: " + ", ".join(
            f"{k} {np.mean([r[k] for r in task_rows]) * (1 if k == 'score' else 100):.1f}"
            for k in ("score", "exact") if k in task_rows[0]) + f" ({len(made)} haystacks, {len(task_rows)} queries)")
  return rows


# ----------------------------------------------------------------------------- intervals over haystacks


@dataclasses.dataclass(frozen=True)
class Cell:
  """A (method, task, length) cell: the mean of a metric over its queries, its interval
  (bootstrap over haystacks), and how many haystacks and queries it holds."""

  method: str
  task: str
  length: int
  metric: str
  value: Interval
  haystacks: int
  queries: int


class _Clusters:
  """Per-haystack sums and counts of one metric in one cell, resampled by haystack."""

  def __init__(self, rows: Sequence[dict], metric: str):
    values = [r.get(metric, r.get("metrics", {}).get(metric)) for r in rows]  # run()'s rows or results.jsonl's
    check(bool(rows) and None not in values, "ruler: rows", f"rows that hold {metric!r}", sorted(rows[0]) if rows else rows)
    scale = 100.0 if metric == "exact" else 1.0
    groups = collections.defaultdict(list)
    for r, value in zip(rows, values):
      groups[r["haystack"]].append(scale * float(value))
    self.sums = np.asarray([math.fsum(v) for v in groups.values()])
    self.counts = np.asarray([len(v) for v in groups.values()], np.float64)

  @property
  def estimate(self) -> float:
    return float(self.sums.sum() / self.counts.sum())

  def draws(self, resamples: int, rng: np.random.Generator) -> np.ndarray:
    index = block_resample_indices(len(self.sums), 1, resamples, rng)
    return self.sums[index].sum(-1) / self.counts[index].sum(-1)


def _percentiles(estimate: float, draws: np.ndarray, level: float) -> Interval:
  tail = (1 - level) / 2
  low, high = np.quantile(draws, [tail, 1 - tail], method="inverted_cdf")
  return Interval(estimate=float(estimate), low=float(low), high=float(high), level=level)


def _grouped(rows: Sequence[dict]) -> dict[tuple[str, str, int], list[dict]]:
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r.get("method", ""), r["task"], int(r["length"]))].append(r)
  return dict(groups)


def cells(rows: Sequence[dict], metric: str = "score", *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
          level: float = 0.95) -> list[Cell]:
  """Every (method, task, length) cell of ``rows``: ``metric`` ('score' or 'exact', 0-100)."""
  out = []
  for (method, task, length), group in sorted(_grouped(rows).items()):
    clusters = _Clusters(group, metric)
    value = _percentiles(clusters.estimate, clusters.draws(resamples, np.random.default_rng(seed)), level)
    out.append(Cell(method, task, length, metric, value, len(clusters.sums), len(group)))
  return out


@dataclasses.dataclass(frozen=True)
class EffectiveLength:
  """One method's effective context length: the longest evaluated length such that it and
  every shorter one average above ``threshold`` (None: not even the shortest), with the
  interval of that length over haystack resamples (0 where a resample passes no length)."""

  method: str
  length: int | None
  low: int
  high: int
  threshold: float
  averages: dict[int, Interval]  # the task-averaged score at each length
  tasks: tuple[str, ...]
  haystacks: int  # per (task, length) cell, the fewest
  queries: int


class _Averages:
  """A method's task-averaged metric at each length and its haystack-resampled draws."""

  def __init__(self, rows: Sequence[dict], method: str, metric: str, resamples: int, seed: int):
    groups = {k: v for k, v in _grouped(rows).items() if k[0] == method}
    check(bool(groups), "ruler: method", f"one of {sorted({k[0] for k in _grouped(rows)})}", method)
    self.lengths = sorted({length for _, _, length in groups})
    by_length = {n: {task for _, task, length in groups if length == n} for n in self.lengths}
    self.tasks = tuple(sorted(set.intersection(*by_length.values())))
    check(bool(self.tasks), f"ruler: method {method!r}", "one task evaluated at every length", by_length)
    rng = np.random.default_rng(seed)
    estimates, draws, self.haystacks, self.queries = [], [], [], []
    for n in self.lengths:
      clusters = [_Clusters(groups[(method, task, n)], metric) for task in self.tasks]
      estimates.append(np.mean([c.estimate for c in clusters]))
      draws.append(np.mean([c.draws(resamples, rng) for c in clusters], axis=0))
      self.haystacks.extend(len(c.sums) for c in clusters)
      self.queries.extend(int(c.counts.sum()) for c in clusters)
    self.estimate = np.asarray(estimates)  # [lengths]
    self.draws = np.stack(draws, axis=-1)  # [resamples, lengths]


def _longest_passing(scores: np.ndarray, threshold: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
  """[...]: the longest of ``lengths`` such that it and every shorter one score >= threshold (0: none)."""
  passing = np.cumprod(scores >= threshold[..., None], axis=-1).astype(bool)
  count = passing.sum(-1)
  return np.where(count > 0, np.asarray(lengths)[np.maximum(count - 1, 0)], 0)


def _effective(averages: _Averages, method: str, threshold, threshold_draws, shown: float, level: float):
  found = int(_longest_passing(averages.estimate, np.asarray(threshold), averages.lengths))
  draws = _longest_passing(averages.draws, np.asarray(threshold_draws), averages.lengths)
  tail = (1 - level) / 2
  low, high = np.quantile(draws, [tail, 1 - tail], method="inverted_cdf")
  per_length = {n: _percentiles(averages.estimate[j], averages.draws[:, j], level)
                for j, n in enumerate(averages.lengths)}
  return EffectiveLength(method, found or None, int(low), int(high), float(shown), per_length, averages.tasks,
                         min(averages.haystacks), sum(averages.queries))


def effective_length(rows: Sequence[dict], method: str = "", threshold: float = RULER_THRESHOLD, *,
                     metric: str = "score", resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> EffectiveLength:
  """RULER's effective length of ``method``: every length up to it averages >= ``threshold``
  over the tasks evaluated at every length."""
  averages = _Averages(rows, method, metric, resamples, seed)
  return _effective(averages, method, threshold, np.full(resamples, threshold), threshold, level)


def relative_effective_length(rows: Sequence[dict], training_length: int, method: str = "",
                              fraction: float = RELATIVE_FRACTION, *, metric: str = "score",
                              resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                              level: float = 0.95) -> EffectiveLength:
  """The effective length against the model's own bar: ``fraction`` of its average over the
  evaluated lengths up to ``training_length`` (recomputed in every resample)."""
  check(0 < fraction <= 1, "ruler: fraction", "in (0, 1]", fraction)
  averages = _Averages(rows, method, metric, resamples, seed)
  inside = [j for j, n in enumerate(averages.lengths) if n <= training_length]
  if not inside:
    raise ConfigError(f"ruler: the relative effective length needs a length inside the training length "
                      f"{training_length}; evaluated {averages.lengths}")
  bar = fraction * averages.estimate[inside].mean()
  return _effective(averages, method, bar, fraction * averages.draws[:, inside].mean(-1), bar, level)


def row_key(method: str, haystack_id: str, query: int) -> str:
  """The results.jsonl key of one query's row."""
  return f"ruler/{method}/{haystack_id}/{query}"


def result_rows(rows: Sequence[dict], *, config_hash: str, commit: str) -> list[dict]:
  """``rows`` as results.jsonl rows (kind 'ruler', keyed by ``row_key``)."""
  from rope_lab import results  # pylint: disable=g-import-not-at-top
  metrics = ("score", "exact", "token_accuracy", "answer_logprob")
  out = []
  for r in rows:
    key = row_key(r["method"], r["haystack"], r["query"])
    fields = {k: v for k, v in r.items() if k not in metrics + ("seed",)}
    out.append(results.make_row("ruler", key, metrics={k: r[k] for k in metrics if k in r}, seed=r["seed"],
                                config_hash=config_hash, commit=commit, **fields))
  return out


def summary_lines(rows: Sequence[dict], training_length: int | None = None, **kwargs) -> list[str]:
  """A plain-text summary of ``run``'s rows or results.jsonl's: each cell, then each method's
  effective lengths, by RULER's score (or teacher-forced exact match where rows lack it)."""
  lines = []
  for method in sorted({r.get("method", "") for r in rows}):
    mine = [r for r in rows if r.get("method", "") == method]
    metric = "score" if all("score" in r or "score" in r.get("metrics", {}) for r in mine) else "exact"
    lines += [f"{method or '-'} {c.task} {c.length} {metric}: {c.value.format(1)} ({c.haystacks} haystacks, "
              f"{c.queries} queries)" for c in cells(mine, metric, **kwargs)]
    found = [effective_length(mine, method, metric=metric, **kwargs)]
    if training_length:
      try:
        found.append(relative_effective_length(mine, training_length, method, metric=metric, **kwargs))
      except ConfigError as e:
        lines.append(f"{method or '-'}: {e}")
    lines += [f"{method or '-'} effective length ({metric} averaged over {len(e.tasks)} tasks >= {e.threshold:.1f}): "
              f"{e.length or 'none'} [{e.low}, {e.high}]" for e in found]
  return lines


def measure_into(path: str, loaded: LoadedModel, encoding, tasks: Sequence[str], lengths: Sequence[int],
                 samples: int, seed: int = 0, *, settings: Any, training_length: int | None = None,
                 method: str = "own", log: Callable[[str], None] | None = None, **kwargs) -> tuple[int, list[str]]:
  """``run`` for the haystacks the results file ``path`` lacks, their rows appended to it
  (``settings``: the configuration hashed into them); (rows written, the summary lines of
  every RULER row the file holds)."""
  from rope_lab import results  # pylint: disable=g-import-not-at-top
  file = results.ResultsFile(path)
  done = file.done_keys()  # a measurement started again does only what is missing
  training_length = training_length or loaded.training_length
  rows = run(loaded.model, loaded.tokenizer, encoding, tasks, lengths, samples, seed, training_length=training_length,
             method=method, log=log, skip=lambda haystack: row_key(method, haystack, 0) in done, **kwargs)
  written = file.append(result_rows(rows, config_hash=results.config_hash(settings), commit=results.git_commit()))
  return written, summary_lines(results.select(file.read(), kind="ruler"), training_length)
