"""What a search on a trained model leaves in its work directory.

  longrope_factors.json   the factor file (pe.load_factors)
  longrope_encoding.json  the same as an encoding spec (experiments.evaluate --encoding)
  results.jsonl           one row per generation and stage
  figures/                the factors against PI / NTK / YaRN, convergence per stage
"""

from __future__ import annotations

import dataclasses
import json
import os

from rope_lab import pe
from rope_lab.search import scoring
from rope_lab.search.evolution import FACTOR_FILE, SearchResult, write_factor_file
from rope_lab.search.plots import plot_convergence, plot_factors
from rope_lab.search.state import RESULT_KIND, RESULTS_FILE, read_result_rows

FACTOR_SPEC_FILE = "longrope_encoding.json"


def append_stage_rows(workdir: str, stage: str, history) -> None:
  """Each generation row once in <workdir>/results.jsonl, tagged with its stage (resumes add no copies)."""
  logged = {(row.get("stage"), row.get("generation"), row.get("seed"))
            for row in read_result_rows(workdir) if row.get("kind") == RESULT_KIND}
  with open(os.path.join(workdir, RESULTS_FILE), "a") as f:
    for row in history:
      if (stage, row["generation"], row["seed"]) not in logged:
        f.write(json.dumps({**row, "stage": stage}) + "\n")


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
  long: SearchResult  # at the target length
  stage1: SearchResult | None
  short: SearchResult | None
  factor_file: str
  encoding: pe.Encoding  # the LongRoPE encoding written


def write_outputs(workdir: str, stages: dict, results: dict, space: scoring.RotarySpace) -> SearchOutcome:
  """The factor file, the encoding spec, the figures; returns what was written."""
  long, short = results["long"], results.get("short")
  search = stages["long"].search
  short_factors = None if short is None else short.factors
  factor_file = os.path.join(workdir, FACTOR_FILE)
  write_factor_file(factor_file, long, search, short_factors, head_dim=space.head_dim, layout=space.layout)
  # The encoding spec (for experiments.evaluate --encoding) carries the same factors and layout.
  encoding = scoring.longrope_encoding(space, long.factors, original_length=search.original_length,
                                       target_factor=search.target_factor, n_hat=long.n_hat,
                                       short_factor=short_factors)
  spec = {**pe.to_dict(encoding), "id": "longrope_searched", "label": "LongRoPE (searched)"}
  with open(os.path.join(workdir, FACTOR_SPEC_FILE), "w") as f:
    json.dump(spec, f, indent=1)
  figures = os.path.join(workdir, "figures")
  os.makedirs(figures, exist_ok=True)
  plot_factors(os.path.join(figures, "longrope_factors.png"), long.factors, search, short_factors=short_factors)
  for name, result in results.items():
    plot_convergence(os.path.join(figures, f"convergence_{name}.png"), result.history)
  return SearchOutcome(long=long, stage1=results.get("stage1"), short=short, factor_file=factor_file,
                       encoding=encoding)
