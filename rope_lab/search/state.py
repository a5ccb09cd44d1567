"""What a LongRoPE search keeps on disk so it can stop at any moment and resume.

<workdir>/longrope_search_state.json   after each completed generation, written to a
    temporary file and moved into place with os.replace, so a reader (or a resumed run
    after SIGKILL/SIGTERM) sees the previous or the new generation, never half of one.
<workdir>/longrope_score_cache.jsonl   scores of the generation in progress, appended after
    each scorer call returns, so an interruption inside a generation loses no scored
    candidate. A torn last line (killed while writing) is ignored.
<workdir>/results.jsonl                one row per completed generation (shared log: other
    kinds of rows may live in the same file).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from rope_lab.search.config import SearchConfig, config_changes
from rope_lab.search.genome import Candidate, make_candidate

STATE_FILE = "longrope_search_state.json"
CACHE_FILE = "longrope_score_cache.jsonl"
RESULTS_FILE = "results.jsonl"
STATE_FORMAT = "rope_lab.longrope_search_state/1"
RESULT_KIND = "longrope_search"


@dataclasses.dataclass(frozen=True)
class SearchState:
  """The search after ``generation`` completed generations (0: the initial population)."""

  generation: int
  archive: tuple  # ((Candidate, perplexity), ...): everything scored, in order of creation
  population: tuple  # archive indices of the current population
  rng_state: dict  # numpy bit generator state after the generation
  history: tuple  # one results row per completed generation


def write_json_atomic(path: str, record) -> None:
  """tmp + fsync + os.replace: the file holds the old or the new record, never a mix."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _candidate_record(candidate: Candidate, perplexity: float) -> list:
  return [list(candidate.steps), candidate.n_hat, candidate.alpha, candidate.beta, perplexity]


def save_state(workdir: str, state: SearchState, cfg: SearchConfig) -> None:
  write_json_atomic(os.path.join(workdir, STATE_FILE), {
      "format": STATE_FORMAT,
      "config": cfg.to_json(),
      "generation": state.generation,
      "archive": [_candidate_record(c, ppl) for c, ppl in state.archive],
      "population": list(state.population),
      "rng_state": state.rng_state,
      "history": list(state.history),
  })


def load_state(workdir: str, cfg: SearchConfig) -> SearchState | None:
  """The saved state, or None when there is none; an error if it was made by another config."""
  path = os.path.join(workdir, STATE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if record.get("format") != STATE_FORMAT:
    raise ValueError(f"{path}: not a LongRoPE search state (format {record.get('format')!r})")
  changed = config_changes(record["config"], cfg)
  if changed:
    raise ValueError(f"{path} was written by a search with different {', '.join(changed)}; resume "
                     "with the same SearchConfig (only generations and score_batch_size may change) "
                     "or use another workdir")
  archive = tuple((make_candidate(steps, n_hat, alpha, beta), float(ppl))
                  for steps, n_hat, alpha, beta, ppl in record["archive"])
  return SearchState(generation=record["generation"], archive=archive,
                     population=tuple(record["population"]), rng_state=record["rng_state"],
                     history=tuple(record["history"]))


def restore_rng(rng_state: dict) -> np.random.Generator:
  bit_generator = getattr(np.random, rng_state["bit_generator"])()
  bit_generator.state = rng_state
  return np.random.Generator(bit_generator)


# ----------------------------------------------------------------------------- score cache


def load_score_cache(workdir: str) -> dict:
  """key -> perplexity for every complete line of the cache file."""
  cache = {}
  path = os.path.join(workdir, CACHE_FILE)
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
          cache[(tuple(row["steps"]), row["n_hat"])] = float(row["perplexity"])
        except (ValueError, KeyError, TypeError):
          continue  # torn by an interruption while writing
  return cache


def append_scores(workdir: str, keys: list, perplexities: np.ndarray) -> None:
  with open(os.path.join(workdir, CACHE_FILE), "a") as f:
    for (steps, n_hat), ppl in zip(keys, perplexities):
      f.write(json.dumps({"steps": list(steps), "n_hat": n_hat, "perplexity": float(ppl)}) + "\n")
    f.flush()
    os.fsync(f.fileno())


def clear_score_cache(workdir: str) -> None:
  """After a state save the archive holds every cached score; a stale cache is harmless anyway."""
  path = os.path.join(workdir, CACHE_FILE)
  if os.path.exists(path):
    os.remove(path)


# ----------------------------------------------------------------------------- results log


def _is_own_row(row, cfg: SearchConfig) -> bool:
  return (isinstance(row, dict) and row.get("kind") == RESULT_KIND and row.get("seed") == cfg.seed
          and row.get("target_factor") == cfg.target_factor)


def read_result_rows(workdir: str) -> list[dict]:
  """Rows of <workdir>/results.jsonl; a torn last line (a kill mid-write) is skipped."""
  path = os.path.join(workdir, RESULTS_FILE)
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if isinstance(row, dict):
          rows.append(row)
  return rows


def logged_generations(workdir: str, cfg: SearchConfig) -> set:
  """Generations of this search already in results.jsonl (a crash may fall between save and log)."""
  return {row.get("generation") for row in read_result_rows(workdir) if _is_own_row(row, cfg)}


def append_results(workdir: str, rows: list) -> None:
  if rows:
    with open(os.path.join(workdir, RESULTS_FILE), "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
