"""Evolution search of LongRoPE per-pair rotary rescale factors (Ding et al. 2024): the public API.

  cfg = SearchConfig(target_factor=8.0, rotary_pairs=32, original_length=4096)
  result = run_search(cfg, score_population, "workdir/longrope_s8")
  result.factors, result.n_hat, result.perplexity

``score_population(factors_NxP, n_hat_N) -> perplexity_N`` scores a whole population in one
call (lower is better); ``make_population_scorer`` builds it for a trained model, and
``run_longrope_search`` runs the whole procedure (stages, outputs) on a trained run:

  run = run_from_mapping({"base_workdir": "runs/tiny", "target_length": 1024, "population": 16})
  outcome = run_longrope_search(run, "runs/longrope_s8")

config     SearchConfig: search space (grid, monotone, piecewise, n_hat) and the evolution
           hyperparameters, declared once
genome     candidates, constraints, mutation and crossover
seeds      PI / NTK-aware / YaRN as per-pair factors; rescale_factors for progressive stages
state      the on-disk state that makes a search resumable
evolution  run_search and the factor file it writes
plots      factors against PI / NTK / YaRN, convergence
scoring    the objective: a frozen model's perplexity for a whole population in one
           compiled call (vmap over the rotary tables), optionally split over devices
settings   SearchRun: which trained run, lengths, stages and documents a search uses
stages     the stage1 / long / short stages planned from a SearchRun
outputs    the factor file, encoding spec, results rows and figures of a search
runner     run_longrope_search: check every input, then run or resume the stages
"""

from rope_lab.search.config import (  # noqa: F401
    DEFAULT_N_HAT_CHOICES,
    SEED_NAMES,
    SearchConfig,
    SearchConfigError,
    SearchSetupError,
)
from rope_lab.search.evolution import (  # noqa: F401
    FACTOR_FILE,
    SearchResult,
    longrope_config,
    run_search,
    write_factor_file,
)
from rope_lab.search.genome import Candidate, crossover, is_valid, mutate, violations  # noqa: F401
from rope_lab.search.outputs import FACTOR_SPEC_FILE, SearchOutcome  # noqa: F401
from rope_lab.search.plots import plot_convergence, plot_factors  # noqa: F401
from rope_lab.search.runner import (  # noqa: F401
    BaseModel,
    base_model_from_workdir,
    run_longrope_search,
    sigterm_as_keyboard_interrupt,
    validation_documents,
)
from rope_lab.search.scoring import (  # noqa: F401
    PopulationScorer,
    RotarySpace,
    ScoringSetup,
    attention_factor_for,
    default_candidates_per_call,
    longrope_encoding,
    make_population_scorer,
    one_at_a_time_perplexities,
    population_hooks,
    rotary_space,
)
from rope_lab.search.seeds import (  # noqa: F401
    ntk_factors,
    pi_factors,
    rescale_factors,
    seed_candidates,
    yarn_factors,
)
from rope_lab.search.settings import SearchRun, run_from_mapping  # noqa: F401
from rope_lab.search.stages import Stage, plan_stages, seed_from_file  # noqa: F401
from rope_lab.search.state import RESULTS_FILE, STATE_FILE  # noqa: F401
