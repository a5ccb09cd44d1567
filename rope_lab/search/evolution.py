"""The LongRoPE evolution search loop (Ding et al. 2024, sec. 3.2).

generation 0: score the seeds (given factors, PI, NTK-aware, YaRN) and random monotone
    mutations of them, up to cfg.population candidates.
generation g: keep the top_k candidates by perplexity as parents; add cfg.mutations
    mutants of random parents and cfg.crossovers children of random parent pairs (a failed
    crossover falls back to a mutation of its first parent, as the reference does); score
    the children; the population is parents + children.
No candidate is ever scored twice: children duplicating anything scored so far are
rejected at birth, and the scores of an interrupted generation wait in a cache.

The objective is injected: ``score_population(factors_NxP, n_hat_N) -> perplexity_N``
(lower is better) scores a batch in one call, so the caller can compile it once.

Progressive extension and the short factors are the same search with other inputs:
  long, stage 2:  run_search(SearchConfig(target_factor=s2, ...), score_at_L2, dir2,
                  seed_factors=[rescale_factors(stage1.factors, s2, from_factor=s1)])
  short:          run_search(SearchConfig(target_factor=s_short, seeds=("ones", "pi"), ...),
                  score_at_L_orig, dir_short), where score_at_L_orig evaluates at the
                  original length with the candidate as the short factor set (and the
                  long set fixed); then write_factor_file(path, long, cfg_long, short.factors).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

from rope_lab.pe.longrope import LongRoPE, save_factors
from rope_lab.search import state as store
from rope_lab.search.config import SearchConfig
from rope_lab.search.genome import Candidate, crossover, mutate
from rope_lab.search.seeds import seed_candidates

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
FACTOR_FILE = "longrope_factors.json"


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """The best candidate of the final population and how the search got there."""

  factors: tuple  # lambda_i per rotary pair, fastest first
  n_hat: int
  perplexity: float
  alpha: int
  beta: int
  generation: int  # completed generations
  evaluated: int  # candidates scored in all
  history: tuple  # the results.jsonl rows


# ----------------------------------------------------------------------------- populations


def initial_population(cfg: SearchConfig, seeds: list, rng: np.random.Generator) -> list:
  """Seeds plus mutations of randomly chosen seeds up to cfg.population (fewer if the space runs out)."""
  population = list(seeds[:cfg.population])
  taken = {c.key for c in population}
  for _ in range(cfg.population - len(population)):
    child = mutate(population[int(rng.integers(len(seeds)))], cfg, rng, taken)
    if child is not None:
      population.append(child)
      taken.add(child.key)
  return population


def select_parents(archive: tuple, population: tuple, top_k: int) -> list:
  """Archive indices of the top_k lowest perplexities; ties go to the earlier candidate."""
  return sorted(population, key=lambda index: (archive[index][1], index))[:top_k]


def make_children(cfg: SearchConfig, parents: list, taken: set, rng: np.random.Generator) -> list:
  """cfg.mutations mutants and cfg.crossovers crossover children, all new and valid."""
  children, taken = [], set(taken)

  def add(child: Candidate | None) -> None:
    if child is not None:
      children.append(child)
      taken.add(child.key)

  for _ in range(cfg.mutations):
    add(mutate(parents[int(rng.integers(len(parents)))], cfg, rng, taken))
  for _ in range(cfg.crossovers):
    if len(parents) < 2:
      add(mutate(parents[0], cfg, rng, taken))
      continue
    first, second = sorted(rng.choice(len(parents), 2, replace=False))
    child = crossover(parents[first], parents[second], cfg, rng, taken)
    add(child if child is not None else mutate(parents[first], cfg, rng, taken))
  return children


# ----------------------------------------------------------------------------- scoring


def score_candidates(candidates: list, cfg: SearchConfig, score_population: ScoreFn, workdir: str,
                     cache: dict) -> list:
  """Perplexities of the candidates; those in ``cache`` are not scored again.

  Scores land in the cache file after every scorer call, so an interruption loses at most
  the call in progress. NaN perplexities (diverged runs) count as +inf.
  """
  todo = [c for c in candidates if c.key not in cache]
  batch = cfg.score_batch_size or max(len(todo), 1)
  for start in range(0, len(todo), batch):
    chunk = todo[start:start + batch]
    factors_NxP = np.stack([cfg.factors_of(c.steps) for c in chunk])
    n_hat_N = np.asarray([c.n_hat for c in chunk], np.int64)
    perplexity_N = np.asarray(score_population(factors_NxP, n_hat_N), np.float64)
    if perplexity_N.shape != (len(chunk),):
      raise ValueError(f"score_population returned shape {perplexity_N.shape} for {len(chunk)} "
                       f"candidates; it must return one perplexity per row, shape ({len(chunk)},)")
    perplexity_N = np.where(np.isnan(perplexity_N), np.inf, perplexity_N)
    store.append_scores(workdir, [c.key for c in chunk], perplexity_N)
    cache.update(zip((c.key for c in chunk), perplexity_N.tolist()))
  return [cache[c.key] for c in candidates]


# ----------------------------------------------------------------------------- generations


def history_row(cfg: SearchConfig, generation: int, archive: tuple, population: tuple,
                evaluated: int) -> dict:
  """best / median / worst perplexity of the population and its best candidate."""
  perplexities = np.asarray([archive[i][1] for i in population])
  best, _ = archive[select_parents(archive, population, 1)[0]]
  return {
      "kind": store.RESULT_KIND, "generation": generation, "best": float(perplexities.min()),
      "median": float(np.median(perplexities)), "worst": float(perplexities.max()),
      "target_factor": cfg.target_factor, "seed": cfg.seed, "population": len(population),
      "evaluated": evaluated, "best_factors": cfg.factors_of(best.steps).tolist(),
      "best_n_hat": best.n_hat, "best_alpha": best.alpha, "best_beta": best.beta,
  }


def advance(state: store.SearchState, cfg: SearchConfig, children: list, perplexities: list,
            parents: list, rng: np.random.Generator) -> store.SearchState:
  start = len(state.archive)
  archive = state.archive + tuple(zip(children, perplexities))
  population = tuple(parents) + tuple(range(start, len(archive)))
  generation = state.generation + 1
  row = history_row(cfg, generation, archive, population, len(children))
  return store.SearchState(generation, archive, population, rng.bit_generator.state, state.history + (row,))


def log_missing_rows(workdir: str, state: store.SearchState, logged: set) -> None:
  """Appends the history rows not yet in results.jsonl (a crash may fall between save and log)."""
  missing = [row for row in state.history if row["generation"] not in logged]
  store.append_results(workdir, missing)
  logged.update(row["generation"] for row in missing)


def commit(workdir: str, state: store.SearchState, cfg: SearchConfig, logged: set) -> None:
  """Save the state, then log the generation, then drop the cache the archive now holds."""
  store.save_state(workdir, state, cfg)
  log_missing_rows(workdir, state, logged)
  store.clear_score_cache(workdir)


def start_state(cfg: SearchConfig, score_population: ScoreFn, workdir: str, seed_factors: Sequence,
                cache: dict) -> store.SearchState:
  seeds = seed_candidates(cfg, seed_factors)
  if not seeds:
    raise ValueError("no seeds: set SearchConfig.seeds or pass seed_factors")
  rng = np.random.default_rng(cfg.seed)
  population = initial_population(cfg, seeds, rng)
  perplexities = score_candidates(population, cfg, score_population, workdir, cache)
  archive = tuple(zip(population, perplexities))
  indices = tuple(range(len(archive)))
  row = history_row(cfg, 0, archive, indices, len(archive))
  return store.SearchState(0, archive, indices, rng.bit_generator.state, (row,))


def run_search(cfg: SearchConfig, score_population: ScoreFn, workdir: str, *,
               seed_factors: Sequence = (), short_factors=None,
               log: Callable[[str], None] | None = None) -> SearchResult:
  """Runs (or resumes) the search in ``workdir`` up to cfg.generations; returns the best candidate.

  Writes <workdir>/longrope_search_state.json after every generation, results.jsonl rows,
  and <workdir>/longrope_factors.json (a LongRoPE factor file: long set = the best
  candidate, short set = ``short_factors`` or all ones). ``seed_factors`` are extra seed
  vectors in [1, s] (e.g. from rescale_factors) placed before the named seeds. One search
  per workdir. Resuming with a different config (other than generations and
  score_batch_size) is an error.
  """
  os.makedirs(workdir, exist_ok=True)
  say = log or (lambda message: None)
  cache = store.load_score_cache(workdir)
  logged = store.logged_generations(workdir, cfg)
  state = store.load_state(workdir, cfg)
  if state is None:
    state = start_state(cfg, score_population, workdir, seed_factors, cache)
    commit(workdir, state, cfg, logged)
  else:
    say(f"resuming after generation {state.generation} with {len(state.archive)} candidates scored "
        f"and {len(cache)} cached")
    log_missing_rows(workdir, state, logged)
  rng = store.restore_rng(state.rng_state)
  say(_progress(state))
  while state.generation < cfg.generations:
    parents = select_parents(state.archive, state.population, cfg.top_k)
    taken = {candidate.key for candidate, _ in state.archive}
    children = make_children(cfg, [state.archive[i][0] for i in parents], taken, rng)
    perplexities = score_candidates(children, cfg, score_population, workdir, cache)
    state = advance(state, cfg, children, perplexities, parents, rng)
    commit(workdir, state, cfg, logged)
    say(_progress(state))
  result = result_of(state)
  write_factor_file(os.path.join(workdir, FACTOR_FILE), result, cfg, short_factors)
  return result


def _progress(state: store.SearchState) -> str:
  row = state.history[-1]
  return (f"generation {row['generation']}: best {row['best']:.4f} median {row['median']:.4f} "
          f"worst {row['worst']:.4f} ({len(state.archive)} scored)")


def result_of(state: store.SearchState) -> SearchResult:
  best_index = select_parents(state.archive, state.population, 1)[0]
  best, perplexity = state.archive[best_index]
  factors = tuple(state.history[-1]["best_factors"])
  return SearchResult(factors, best.n_hat, perplexity, best.alpha, best.beta, state.generation,
                      len(state.archive), state.history)


# ----------------------------------------------------------------------------- output


def longrope_config(result: SearchResult, cfg: SearchConfig, short_factors=None,
                    head_dim: int | None = None, layout: str = "half") -> LongRoPE:
  """The LongRoPE encoding of a result: long set = result.factors, short set = given or all ones.

  head_dim defaults to the rotary dimension 2P (full rotary); a larger head_dim gives
  rotary_fraction = 2P / head_dim.
  """
  head_dim = head_dim or 2 * cfg.rotary_pairs
  short = tuple(float(f) for f in short_factors) if short_factors is not None else (1.0,) * cfg.rotary_pairs
  return LongRoPE(base=float(cfg.rope_base), rotary_fraction=2 * cfg.rotary_pairs / head_dim,
                  short_factor=short, long_factor=tuple(result.factors),
                  original_max_position_embeddings=cfg.original_length,
                  factor=float(cfg.target_factor), n_hat=result.n_hat, head_dim=head_dim,
                  layout=layout)


def write_factor_file(path: str, result: SearchResult, cfg: SearchConfig, short_factors=None,
                      head_dim: int | None = None, layout: str = "half") -> LongRoPE:
  """Saves longrope_config(...) with rope_lab.pe.save_factors, plus how it was found."""
  encoding = longrope_config(result, cfg, short_factors, head_dim, layout)
  search = {"target_factor": cfg.target_factor, "seed": cfg.seed, "perplexity": result.perplexity,
            "generations": result.generation, "evaluated": result.evaluated}
  save_factors(path, encoding, head_dim=encoding.head_dim, extra={"search": search})
  return encoding
