"""LongRoPE rescale-factor search: the public entry point (implementation in rope_lab.search).

  cfg = SearchConfig(target_factor=8.0, rotary_pairs=32, original_length=4096)
  result = run_search(cfg, score_population, "workdir/longrope_s8")
  result.factors, result.n_hat, result.perplexity

``score_population(factors_NxP, n_hat_N) -> perplexity_N`` scores a whole population in one
call (lower is better); ``make_population_scorer`` builds it for a trained model:

  space = rotary_space(run.encoding, run.model.head_dim)
  setup = ScoringSetup(length=8 * 4096, attention_factor=attention_factor_for(8.0, 4096))
  score_population = make_population_scorer(run.model, run.params, windows, space, setup)

See rope_lab.search.evolution for progressive extension and the short-factor search, and
experiments/longrope_search.py for the whole procedure on a trained run.
"""

from rope_lab.search.config import DEFAULT_N_HAT_CHOICES, SEED_NAMES, SearchConfig, SearchConfigError  # noqa: F401
from rope_lab.search.evolution import (  # noqa: F401
    FACTOR_FILE,
    SearchResult,
    longrope_config,
    run_search,
    write_factor_file,
)
from rope_lab.search.genome import Candidate, crossover, is_valid, mutate, violations  # noqa: F401
from rope_lab.search.plots import plot_convergence, plot_factors  # noqa: F401
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
from rope_lab.search.state import RESULTS_FILE, STATE_FILE  # noqa: F401
