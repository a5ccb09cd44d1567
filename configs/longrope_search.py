"""LongRoPE factor search for a trained tiny RoPE model: 128 -> 1024 tokens (s = 8), on CPU.

Two commands (from the repository root): train the base model, then search.

  python -m experiments.train --config=configs/tiny_cpu.py --workdir=/tmp/rope_lab/tiny
  python -m experiments.longrope_search --config=configs/longrope_search.py \\
      --config.base_workdir=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/longrope_s8

The same search command resumes after Ctrl-C or SIGTERM. Arguments (after a colon):

  quick        population 16, 6 generations, 8 parents: a few minutes on 2 CPU cores
  progressive  stage 1 at 512 tokens (s = 4), then 1024 seeded from it, then the short
               set at the original 128 tokens

Evaluate the result on the test split against PI, NTK, YaRN and Dynamic YaRN with
``experiments.evaluate`` (see benchmarks/README.md, "LongRoPE search scoring", "Study").
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, "configs/longrope_search.py", quick=False, progressive=False)
  config = ml_collections.ConfigDict()
  config.base_workdir = config_dict.placeholder(str)  # trained RoPE run (config.json + checkpoints)
  config.target_length = 1024  # tokens the factors are searched for; s = target_length / original
  config.original_length = config_dict.placeholder(int)  # L_orig; None: the run's training length
  config.stage1_length = config_dict.placeholder(int)  # progressive: search here first (None: no stage 1)
  config.short_search = False  # also search the short set at L_orig (long set fixed)
  config.short_max_factor = config_dict.placeholder(float)  # largest short factor; None: s
  config.max_docs = 2  # validation documents scored per candidate
  config.doc_tokens = config_dict.placeholder(int)  # tokens per document; None: target_length
  config.stride_fraction = 0.5  # sliding-window stride / window where a document holds several windows
  config.population = 64  # Ding et al. 2024's reference hyperparameters from here on
  config.generations = 40
  config.mutations = 16  # children by mutation per generation
  config.crossovers = 16  # children by crossover per generation
  config.top_k = 32  # parents kept per generation
  config.mutation_prob = 0.3
  config.crossover_prob = 0.3
  config.grid_step = 0.01  # factor grid spacing
  config.piecewise = False  # search alpha < beta: factor 1 below alpha, s from beta on
  config.search_n_hat = False  # search n_hat (leading positions left unscaled) among n_hat_choices
  config.n_hat = 0  # n_hat of the seeds (of every candidate when not searched)
  config.n_hat_choices = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)  # Ding et al.'s n_hat grid
  config.seeds = ("pi", "ntk", "yarn")  # named seeds of the first population
  config.seed = 0  # the search's random seed
  config.seed_factor_file = config_dict.placeholder(str)  # longrope_factors.json to seed the first stage
  config.rescale_mode = "log"  # how factors found at another s are mapped: log, ratio or clip
  config.candidates_per_call = config_dict.placeholder(int)  # compiled chunk; None: 1 on CPU, 32 per GPU
  config.chunk_size = 128  # attention block length at windows >= 512 tokens
  if arg.quick:
    config.update(population=16, generations=6, mutations=8, crossovers=8, top_k=8)
  if arg.progressive:
    config.update(stage1_length=512, short_search=True)
  return config
