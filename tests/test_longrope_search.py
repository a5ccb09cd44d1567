"""LongRoPE evolution search: constraints, seeds, convergence, resumption, outputs, config errors."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rope_lab import pe
from rope_lab.search import (
    RESULTS_FILE,
    STATE_FILE,
    Candidate,
    SearchConfig,
    SearchConfigError,
    crossover,
    is_valid,
    ntk_factors,
    pi_factors,
    plot_convergence,
    plot_factors,
    rescale_factors,
    run_search,
    seed_candidates,
    violations,
    yarn_factors,
)
from rope_lab.search.genome import crossover_once, make_candidate, mutate_once
from rope_lab.search.state import CACHE_FILE

FAST = settings(max_examples=40, deadline=None)

# ----------------------------------------------------------------------------- helpers


@st.composite
def spaces(draw, piecewise=None):
  """A small search space with random grid, variant and probabilities."""
  return SearchConfig(
      target_factor=draw(st.sampled_from([1.0, 1.5, 2.0, 4.0, 8.0, 16.3])),
      rotary_pairs=draw(st.integers(2, 12)),
      original_length=64,
      grid_step=draw(st.sampled_from([0.01, 0.1, 0.25, 0.5])),
      population=4, top_k=2, max_tries=5,
      mutation_prob=draw(st.floats(0, 1)), crossover_prob=draw(st.floats(0, 1)),
      piecewise=draw(st.booleans()) if piecewise is None else piecewise,
      search_n_hat=draw(st.booleans()),
      seed=draw(st.integers(0, 2**16)),
  )


@st.composite
def candidates_in(draw, cfg):
  """A valid candidate of cfg, drawn independently of the code under test."""
  pairs, top = cfg.rotary_pairs, cfg.grid_top
  steps = sorted(draw(st.lists(st.integers(0, top), min_size=pairs, max_size=pairs)))
  alpha, beta = 0, pairs
  if cfg.piecewise:
    alpha = draw(st.integers(0, pairs - 1))
    beta = draw(st.integers(alpha + 1, pairs))
    steps = [0] * alpha + steps[alpha:beta] + [top] * (pairs - beta)
  n_hat = draw(st.sampled_from(cfg.n_hat_choices)) if cfg.search_n_hat else cfg.n_hat
  return make_candidate(steps, n_hat, alpha, beta)


def assert_valid(candidate: Candidate, cfg: SearchConfig):
  """The constraints, checked on the factors the scorer would see."""
  factors = cfg.factors_of(candidate.steps)
  assert factors.shape == (cfg.rotary_pairs,)
  assert np.all(np.diff(factors) >= 0), factors
  assert factors.min() >= 1.0 and factors.max() <= cfg.target_factor, factors
  assert 0 <= candidate.alpha < candidate.beta <= cfg.rotary_pairs
  if not cfg.piecewise:
    assert (candidate.alpha, candidate.beta) == (0, cfg.rotary_pairs)
  assert np.all(factors[:candidate.alpha] == 1.0)
  assert np.all(factors[candidate.beta:] == cfg.target_factor)
  assert candidate.n_hat in (cfg.n_hat_choices if cfg.search_n_hat else (cfg.n_hat,))
  assert violations(candidate, cfg) == []


HIDDEN = np.array([1.0, 1.0, 1.15, 1.5, 2.2, 3.0, 3.6, 4.0])  # not PI, NTK or YaRN


def hidden_target_ppl(factors_NxP, n_hat_N):
  """1 + sum_i |ln lambda_i - ln lambda*_i| (+ a pull towards n_hat = 8): minimum 1 at the target."""
  distance = np.abs(np.log(factors_NxP) - np.log(HIDDEN)).sum(axis=1)
  return 1.0 + distance + 0.01 * np.abs(np.log2(n_hat_N + 1.0) - np.log2(9.0))


def mini_config(**overrides):
  params = dict(target_factor=4.0, rotary_pairs=8, original_length=64, grid_step=0.05, population=16,
                top_k=8, mutations=8, crossovers=8, generations=20, seed=0)
  params.update(overrides)
  return SearchConfig(**params)


class RecordingScorer:
  """Scores with hidden_target_ppl, records every (factors, n_hat) scored, fails on one call."""

  def __init__(self, fail_on_call=None):
    self.fail_on_call, self.calls, self.scored = fail_on_call, 0, []

  def __call__(self, factors_NxP, n_hat_N):
    self.calls += 1
    if self.calls == self.fail_on_call:
      raise KeyboardInterrupt("interrupted")
    self.scored += [(tuple(f), int(n)) for f, n in zip(factors_NxP.tolist(), n_hat_N)]
    return hidden_target_ppl(factors_NxP, n_hat_N)


def read_state(workdir):
  with open(os.path.join(workdir, STATE_FILE)) as f:
    return json.load(f)


def search_rows(workdir):
  with open(os.path.join(workdir, RESULTS_FILE)) as f:
    return [row for row in map(json.loads, f) if row.get("kind") == "longrope_search"]


# ----------------------------------------------------------------------------- constraints


@FAST
@given(st.data())
def test_mutation_keeps_monotone_interval_and_piece_constraints(data):
  cfg = data.draw(spaces())
  parent = data.draw(candidates_in(cfg))
  assert_valid(parent, cfg)
  rng = np.random.default_rng(cfg.seed)
  for _ in range(5):
    child = mutate_once(parent, cfg, rng)
    assert_valid(child, cfg)
    parent = child


@FAST
@given(st.data())
def test_crossover_returns_only_new_valid_children(data):
  cfg = data.draw(spaces())
  first, second = data.draw(candidates_in(cfg)), data.draw(candidates_in(cfg))
  rng = np.random.default_rng(cfg.seed)
  child = crossover(first, second, cfg, rng, taken={first.key, second.key})
  if child is not None:
    assert_valid(child, cfg)
    assert child.key not in (first.key, second.key)
    # Every free gene comes from one of the parents.
    free = range(child.alpha, child.beta)
    assert all(child.steps[i] in (first.steps[i], second.steps[i]) for i in free)


def test_crossover_rejects_the_non_monotone_mixes_it_draws():
  cfg = mini_config(rotary_pairs=4, crossover_prob=1.0, max_tries=50)
  low = make_candidate([0, 0, 60, 60], 0, 0, 4)
  high = make_candidate([10, 10, 10, 60], 0, 0, 4)
  rng = np.random.default_rng(0)
  draws = [crossover_once(low, high, cfg, rng) for _ in range(200)]
  assert any(not is_valid(c, cfg) for c in draws)  # e.g. [10, 0, 10, 60]: rejection has work to do
  children = [crossover(low, high, cfg, rng, taken=set()) for _ in range(200)]
  assert all(c is not None and is_valid(c, cfg) for c in children)


def test_violations_name_each_broken_constraint():
  cfg = mini_config(rotary_pairs=4, piecewise=True)
  top = cfg.grid_top
  assert violations(make_candidate([0, 5, 3, top], 0, 0, 4), cfg) == [
      "factors decrease from a faster to a slower pair"]
  assert "steps outside" in violations(make_candidate([0, 5, 6, top + 1], 0, 0, 4), cfg)[0]
  assert "alpha (2) < beta (2)" in violations(make_candidate([0, 0, top, top], 0, 2, 2), cfg)[0]
  assert "below alpha" in violations(make_candidate([0, 4, 5, top], 0, 2, 4), cfg)[0]
  assert "at or above beta" in violations(make_candidate([0, 4, 5, 6], 0, 0, 3), cfg)[0]
  assert "n_hat 3" in violations(make_candidate([0, 4, 5, top], 3, 0, 4), cfg)[0]


@FAST
@given(st.sampled_from([1.0, 1.37, 2.0, 8.0, 64.0]), st.integers(2, 64), st.sampled_from([1e4, 5e5]),
       st.sampled_from([16, 256, 4096]), st.booleans())
def test_seeds_are_monotone_and_within_one_and_s(s, pairs, base, original, piecewise):
  cfg = SearchConfig(target_factor=s, rotary_pairs=pairs, original_length=original, rope_base=base,
                     piecewise=piecewise, seeds=("pi", "ntk", "yarn", "ones"))
  for factors in (pi_factors(cfg), ntk_factors(cfg), yarn_factors(cfg)):
    assert np.all(np.diff(factors) >= -1e-12)
    assert factors.min() >= 1 - 1e-12 and factors.max() <= s * (1 + 1e-12)
  assert np.allclose(ntk_factors(cfg)[[0, -1]], [1.0, s])  # slowest pair scales by exactly s
  assert np.all(pi_factors(cfg) == s)
  for seed in seed_candidates(cfg):
    assert_valid(seed, cfg)


def test_yarn_seed_extrapolates_fast_pairs_and_interpolates_slow_ones():
  cfg = SearchConfig(target_factor=8.0, rotary_pairs=32, original_length=4096)
  factors = yarn_factors(cfg)
  assert factors[0] == 1.0 and factors[-1] == pytest.approx(8.0)
  assert 1.0 < factors[12] < 8.0  # the ramp between beta_fast = 32 and beta_slow = 1 rotations


@FAST
@given(st.lists(st.floats(0.5, 40.0), min_size=2, max_size=16), st.sampled_from([2.0, 8.0]),
       st.sampled_from([16.0, 32.0]), st.sampled_from(["log", "ratio", "clip"]))
def test_rescaled_factors_fit_the_new_range(factors, s1, s2, mode):
  out = rescale_factors(factors, s2, from_factor=s1, mode=mode)
  assert np.all(np.diff(out) >= 0) and out.min() >= 1 and out.max() <= s2


def test_log_rescale_maps_one_to_one_and_s1_to_s2():
  out = rescale_factors([1.0, 2.0, 4.0], 16.0, from_factor=4.0, mode="log")
  assert out == pytest.approx([1.0, 4.0, 16.0])


@FAST
@given(st.sampled_from([1.0, 2.5, 4.005, 8.0]), st.sampled_from([0.01, 0.03, 0.5]),
       st.lists(st.floats(0.5, 10.0), min_size=2, max_size=8))
def test_grid_snapping_is_monotone_and_reaches_s(s, step, values):
  cfg = SearchConfig(target_factor=s, rotary_pairs=2, original_length=64, grid_step=step)
  values = np.sort(values)
  steps = cfg.steps_of(values)
  assert np.all(np.diff(steps) >= 0) and steps.min() >= 0 and steps.max() <= cfg.grid_top
  assert cfg.factors_of([cfg.grid_top])[0] == s
  assert np.array_equal(cfg.steps_of(cfg.factors_of(steps)), steps)
  assert np.all(np.abs(cfg.factors_of(steps) - np.clip(values, 1, s)) <= step / 2 + 1e-9)


# ----------------------------------------------------------------------------- search


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miniature_search_improves_and_finds_the_hidden_target(tmp_path, seed):
  scorer = RecordingScorer()
  result = run_search(mini_config(seed=seed, generations=30), scorer, str(tmp_path))
  rows = search_rows(tmp_path)
  assert [row["generation"] for row in rows] == list(range(31))
  bests = [row["best"] for row in rows]
  assert all(later <= earlier for earlier, later in zip(bests, bests[1:]))  # parents survive
  optimum = hidden_target_ppl(HIDDEN[None], np.array([0]))[0]  # n_hat is fixed at 0 here
  assert bests[0] > optimum + 0.3  # no seed is already the answer
  assert result.perplexity == bests[-1] <= optimum + 0.04
  assert np.max(np.abs(np.array(result.factors) - HIDDEN)) <= 0.05 + 1e-9  # within one grid step
  assert len(scorer.scored) == len(set(scorer.scored)) == result.evaluated  # no candidate twice


def test_piecewise_and_n_hat_search_keeps_every_candidate_valid(tmp_path):
  cfg = mini_config(piecewise=True, search_n_hat=True, generations=15, n_hat_choices=(0, 2, 8, 32))
  result = run_search(cfg, RecordingScorer(), str(tmp_path))
  archive = read_state(tmp_path)["archive"]
  keys = [(tuple(steps), n_hat) for steps, n_hat, _, _, _ in archive]
  assert len(keys) == len(set(keys)) == result.evaluated
  for steps, n_hat, alpha, beta, _ in archive:
    assert_valid(make_candidate(steps, n_hat, alpha, beta), cfg)
  assert result.perplexity < 1.2 and result.n_hat in (2, 8, 32)
  assert len({(alpha, beta) for _, _, alpha, beta, _ in archive}) > 3  # the piece genes do move


def test_progressive_seed_is_scored_first_and_short_search_starts_from_ones(tmp_path):
  stage1 = [1.0, 1.0, 1.1, 1.3, 1.6, 2.0, 2.0, 2.0]
  seed = rescale_factors(stage1, 4.0, from_factor=2.0)
  scorer = RecordingScorer()
  run_search(mini_config(generations=1), scorer, str(tmp_path / "long"), seed_factors=[seed])
  assert np.allclose(scorer.scored[0][0], mini_config().factors_of(mini_config().steps_of(seed)))
  short_cfg = mini_config(target_factor=1.5, seeds=("ones",), generations=1)
  scorer = RecordingScorer()
  short = run_search(short_cfg, scorer, str(tmp_path / "short"))
  assert scorer.scored[0][0] == (1.0,) * 8
  assert max(short.factors) <= 1.5
  with pytest.raises(ValueError, match="rescale_factors"):
    run_search(mini_config(), scorer, str(tmp_path / "bad"), seed_factors=[[1.0] * 7 + [5.0]])


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("fail_on_call, completed", [(2, None), (3, 0), (4, 0), (5, 1)],
                         ids=["inside_gen0", "start_of_gen1", "inside_gen1", "start_of_gen2"])
def test_interrupted_search_resumes_without_rescoring_and_matches_uninterrupted(tmp_path, fail_on_call,
                                                                                 completed):
  # Batches of 8: generation 0 is calls 1-2, generation 1 calls 3-4, generation 2 calls 5-6.
  cfg = mini_config(generations=4, score_batch_size=8)
  reference = run_search(cfg, RecordingScorer(), str(tmp_path / "reference"))
  first = RecordingScorer(fail_on_call=fail_on_call)
  with pytest.raises(KeyboardInterrupt):
    run_search(cfg, first, str(tmp_path / "run"))
  saved = os.path.exists(tmp_path / "run" / STATE_FILE)
  assert (read_state(tmp_path / "run")["generation"] if saved else None) == completed
  second = RecordingScorer()
  resumed = run_search(cfg, second, str(tmp_path / "run"))
  scored = first.scored + second.scored
  assert len(scored) == len(set(scored)) == resumed.evaluated  # nothing scored twice
  assert resumed == reference
  assert read_state(tmp_path / "run") == read_state(tmp_path / "reference")
  assert search_rows(tmp_path / "run") == search_rows(tmp_path / "reference")
  assert not os.path.exists(tmp_path / "run" / CACHE_FILE)


def test_more_generations_continue_a_finished_search(tmp_path):
  reference = run_search(mini_config(generations=5), RecordingScorer(), str(tmp_path / "reference"))
  run_search(mini_config(generations=2), RecordingScorer(), str(tmp_path / "run"))
  resumed = run_search(mini_config(generations=5), RecordingScorer(), str(tmp_path / "run"))
  assert resumed == reference


def test_a_torn_cache_line_is_ignored_on_resume(tmp_path):
  cfg = mini_config(generations=2, score_batch_size=8)
  reference = run_search(cfg, RecordingScorer(), str(tmp_path / "reference"))
  with pytest.raises(KeyboardInterrupt):
    run_search(cfg, RecordingScorer(fail_on_call=4), str(tmp_path / "run"))
  with open(tmp_path / "run" / CACHE_FILE, "a") as f:
    f.write('{"steps": [0, 1')  # killed mid-write
  assert run_search(cfg, RecordingScorer(), str(tmp_path / "run")) == reference
  assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "run"))


def test_resuming_with_another_config_is_an_error(tmp_path):
  run_search(mini_config(generations=1), RecordingScorer(), str(tmp_path))
  with pytest.raises(ValueError, match="different mutation_prob"):
    run_search(mini_config(generations=1, mutation_prob=0.5), RecordingScorer(), str(tmp_path))


def test_a_scorer_returning_the_wrong_shape_is_an_error(tmp_path):
  with pytest.raises(ValueError, match=r"shape \(16,\)"):
    run_search(mini_config(), lambda factors, n_hat: np.ones(3), str(tmp_path))


# ----------------------------------------------------------------------------- outputs


def test_factor_file_loads_as_longrope(tmp_path):
  result = run_search(mini_config(generations=2, n_hat=4), RecordingScorer(), str(tmp_path))
  encoding = pe.load_factors(str(tmp_path / "longrope_factors.json"), head_dim=16)
  assert encoding.long_factor == result.factors
  assert encoding.short_factor == (1.0,) * 8
  assert (encoding.factor, encoding.n_hat, encoding.original_max_position_embeddings) == (4.0, 4, 64)


def test_plots_write_png_files(tmp_path):
  cfg = mini_config(generations=2)
  result = run_search(cfg, RecordingScorer(), str(tmp_path))
  plot_factors(str(tmp_path / "factors.png"), result.factors, cfg, short_factors=[1.0] * 8)
  plot_convergence(str(tmp_path / "convergence.png"), result.history)
  for name in ("factors.png", "convergence.png"):
    with open(tmp_path / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("overrides, message", [
    (dict(target_factor=0.5), r"target_factor must be a finite number >= 1"),
    (dict(population=8), r"population \(8\) must be >= top_k \(32\)"),
    (dict(mutation_prob=1.5), r"mutation_prob must be in \[0, 1\], got 1.5"),
    (dict(crossover_prob=-0.1), r"crossover_prob must be in \[0, 1\]"),
    (dict(grid_step=0.0), r"grid_step must be a finite number > 0"),
    (dict(rotary_pairs=1), r"rotary_pairs must be an integer >= 2"),
    (dict(generations=-1), r"generations must be an integer >= 0"),
    (dict(top_k=1, population=1), r"top_k \(1\) must be >= 2 when crossovers \(16\) > 0"),
    (dict(search_n_hat=True, n_hat=3), r"n_hat \(3\) must be one of n_hat_choices"),
    (dict(n_hat_choices=(0, 0)), r"n_hat_choices must be distinct integers"),
    (dict(seeds=("pi", "linear")), r"seeds must be names from .* unknown \['linear'\]"),
    (dict(yarn_beta_fast=1.0), r"yarn_beta_fast > yarn_beta_slow > 0"),
    (dict(score_batch_size=0), r"score_batch_size must be None or an integer >= 1"),
    (dict(population=64.0), r"population must be an integer >= 1, got 64.0"),
])
def test_bad_search_config_values_are_clear_errors(overrides, message):
  params = dict(target_factor=8.0, rotary_pairs=32, original_length=4096)
  params.update(overrides)
  with pytest.raises(SearchConfigError, match=message):
    SearchConfig(**params)


def test_reference_defaults():
  cfg = SearchConfig(target_factor=8.0, rotary_pairs=32, original_length=4096)
  assert (cfg.population, cfg.generations, cfg.mutations, cfg.crossovers, cfg.top_k) == (64, 40, 16, 16, 32)
  assert (cfg.mutation_prob, cfg.crossover_prob, cfg.grid_step) == (0.3, 0.3, 0.01)
  assert cfg.grid_top == 700 and cfg.factors_of([7, 700]).tolist() == [1.07, 8.0]
