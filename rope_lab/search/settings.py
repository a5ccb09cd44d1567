"""SearchRun: what a LongRoPE search on a trained model is asked to do (configs/longrope_search.py).

The run settings (which model, which lengths, which stages, which documents) are declared
here; the evolution hyperparameters (population, generations, grid, ...) are SearchConfig's
fields, declared and checked only there. A flat config holds both: ``run_from_mapping``
sends every field SearchConfig owns to ``SearchRun.evolution``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from rope_lab import config as config_lib
from rope_lab.errors import ConfigError
from rope_lab.search.config import SearchConfig

# SearchConfig fields a stage derives from the model and the lengths, never from the config.
DERIVED_FIELDS = ("target_factor", "rotary_pairs", "original_length", "rope_base", "score_batch_size")
EVOLUTION_FIELDS = tuple(f.name for f in dataclasses.fields(SearchConfig) if f.name not in DERIVED_FIELDS)


@dataclasses.dataclass(frozen=True)
class SearchRun:
  """One search on a trained run; see the field comments in configs/longrope_search.py."""

  base_workdir: str | None = None  # the trained RoPE run
  target_length: int = 1024  # s = target_length / original_length
  original_length: int | None = None  # None: the run's training length
  stage1_length: int | None = None  # progressive: search here first
  short_search: bool = False  # also search the short set at the original length
  short_max_factor: float | None = None  # None: s
  max_docs: int = 2  # validation documents scored per candidate
  doc_tokens: int | None = None  # None: target_length
  stride_fraction: float = 0.5
  seed_factor_file: str | None = None  # longrope_factors.json seeding the first stage
  rescale_mode: str = "log"  # log, ratio or clip
  candidates_per_call: int | None = None  # None: scoring.default_candidates_per_call
  chunk_size: int = 128  # attention block length at windows >= 512 tokens
  # SearchConfig hyperparameters set by the config (EVOLUTION_FIELDS); the rest keep its defaults.
  evolution: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))


def run_from_mapping(values: Mapping[str, Any], where: str = "config") -> SearchRun:
  """A flat mapping (a config's to_dict()) split into the run's fields and SearchConfig's."""
  run_fields = {f.name for f in dataclasses.fields(SearchRun)} - {"evolution"}
  unknown = sorted(set(values) - run_fields - set(EVOLUTION_FIELDS))
  if unknown:
    raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; a search has: "
                      f"{', '.join(sorted(run_fields))} and SearchConfig's {', '.join(EVOLUTION_FIELDS)}")
  hints = typing.get_type_hints(SearchConfig)
  evolution = {name: config_lib.coerce(value, hints[name], f"{where}.{name}")
               for name, value in values.items() if name in EVOLUTION_FIELDS and value is not None}
  run = config_lib.dataclass_from_mapping(SearchRun, {k: v for k, v in values.items() if k in run_fields}, where)
  return dataclasses.replace(run, evolution=types.MappingProxyType(evolution))
