"""Evolution search of LongRoPE per-pair rotary rescale factors (Ding et al. 2024).

config     SearchConfig: search space (grid, monotone, piecewise, n_hat) and hyperparameters
genome     candidates, constraints, mutation and crossover
seeds      PI / NTK-aware / YaRN as per-pair factors; rescale_factors for progressive stages
state      the on-disk state that makes a search resumable
evolution  run_search and the factor file it writes
plots      factors against PI / NTK / YaRN, convergence
scoring    the objective: a frozen model's perplexity for a whole population in one
           compiled call (vmap over the rotary tables), optionally split over devices
"""
