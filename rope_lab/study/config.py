"""StudyConfig: what the reference study trains and measures, and its files in a work directory."""

from __future__ import annotations

import dataclasses
import json
import os

from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab import results as results_lib
from rope_lab.errors import ConfigError, check
from rope_lab.study import runs
from rope_lab.study.declarations import RunDeclaration, parse_runs

CONFIG_FILE = "study_config.json"


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """What the study trains and measures. Lengths are multiples ("scales") of a training length."""

  base: config_lib.ExperimentConfig | None = None  # the pretraining run (RoPE, short context)
  seeds: tuple[int, ...] = (0, 1, 2)  # one base model (and its fine-tunes) per seed
  eval_scales: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # evaluation windows / training length
  stride_fraction: float = 0.5  # sliding-window stride as a fraction of the window
  eval_split: str = "test"  # documents the reported numbers come from
  choice_split: str = "validation"  # documents any choice is made on
  # Held-out documents scored at every length: the first eval_docs by id of those with at least
  # eval_doc_tokens tokens (shorter ones are skipped), each cut to eval_doc_tokens tokens.
  eval_docs: int = 6
  eval_doc_tokens: int = 8192  # >= the longest window, so every length scores the same tokens
  static_scale: float = 4.0  # target scale s of the static zero-shot methods
  # Fine-tunes of every seed's base model at finetune_scale, and extra pretraining runs, each
  # declared as 'label=encoding[:param=value...] [| field=value ...]' (rope_lab/study/declarations.py);
  # parsed into RunDeclarations on construction. The first fine-tune is the one the learning rate is
  # chosen with; ``grid_finetune`` (a fine-tune label) is the Giraffe grid's encoding and the one also
  # evaluated with its factor matched to each window (PI s=L/L0).
  finetunes: tuple[RunDeclaration | str, ...] = ("pi=pi", "yarn=yarn")  # strings: parsed here
  pretrain_variants: tuple[RunDeclaration | str, ...] = ()
  variant_seeds: int = 1  # the variants are trained for the first this-many seeds
  grid_finetune: str = "pi"
  finetune_scale: int = 4  # fine-tuning context = finetune_scale x training length
  finetune_steps: int = 30
  finetune_learning_rates: tuple[float, ...] = (3e-4,)  # several: chosen on validation
  finetune_warmup_steps: int = 5
  grid_train_scales: tuple[int, ...] = (2, 4, 8)  # Giraffe grid: PI fine-tunes at these scales
  grid_seeds: int = 1  # the grid's extra fine-tunes use the first this-many seeds
  ape: bool = True  # train an absolute-position model (first seed) for LongEmbed's extensions
  # That model, declared as the variants are (its label is ignored: the run is ``ape_s<seed>``):
  # an absolute table, 'learned' or 'sinusoidal' (with its embedding multiplier, model.embedding_multiplier).
  ape_model: RunDeclaration | str = "learned"
  retrieval_seeds: int = 1  # passkey / lines on the first this-many seeds' models
  passkey_lengths: tuple[int, ...] = (256, 512, 1024, 2048)  # tokens (the prompt alone takes ~170)
  passkey_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  passkey_samples: int = 2
  middle_length: int = 512  # "lost in the middle": accuracy by depth at this length
  middle_depths: int = 11
  middle_samples: int = 2
  lines_lengths: tuple[int, ...] = (512, 1024, 2048)  # tokens (the instructions alone take ~400)
  lines_samples: int = 4
  # Optional passkey probe model: trained at passkey_train_length with this fraction of its
  # rows replaced by passkey examples (0: none). See evaluate/retrieval_data.py.
  passkey_mix: float = 0.0
  passkey_train_length: int = 256
  attention_scales: tuple[int, ...] = (1, 4, 16)  # empirical attention maps (first seed)
  attention_docs: int = 2
  analytic_scale: int = 32  # analytic similarity by distance up to this x training length
  # Baselines drawn on the perplexity figures: the base model with its window cut to this
  # fraction of the training length (same tokens), and a byte n-gram fitted on the training split.
  # Short retrieval rows (short passkey, MQAR; loss on the answers) mixed into the base models'
  # pretraining, and their evaluation from inside the training length (0: off).
  retrieval_mix: float = 0.0
  short_retrieval_lengths: tuple[int, ...] = (64, 128, 256, 512, 1024)
  short_retrieval_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  short_retrieval_samples: int = 20  # per depth: 100 examples per (model, encoding, length) cell
  # Each retrieval row is packed with examples of retrieval_min_length up to the pretraining length
  # tokens, each with positions from 0 (0: one example of the row's length per row).
  retrieval_min_length: int = 0
  # Fine-tunes keep the same fraction of retrieval rows, their examples no longer than the
  # pretraining length: the format is kept, retrieval beyond L is never taught (False: text only).
  finetune_retrieval: bool = False
  truncation_scale: float = 0.25
  ngram_order: int = 5
  ngram_train_bytes: int = 2_000_000  # the n-gram's training text (pure Python: ~1 min per 2 MB)
  # LongRoPE (Ding et al. 2024): per-pair rescale factors searched by evolution on the first seed's
  # base model for static_scale x the training length, scored on the first longrope_docs
  # validation documents; then applied zero-shot to every seed's base model. A reduced budget
  # (the paper's is population 64, 40 generations, 16 + 16 children, top 32). False: no search.
  longrope_search: bool = True
  longrope_population: int = 16
  longrope_generations: int = 4
  longrope_mutations: int = 8
  longrope_crossovers: int = 8
  longrope_top_k: int = 8
  longrope_docs: int = 2

  def __post_init__(self):
    object.__setattr__(self, "finetunes", parse_runs(self.finetunes, "config.finetunes"))
    object.__setattr__(self, "pretrain_variants", parse_runs(self.pretrain_variants, "config.pretrain_variants"))
    object.__setattr__(self, "ape_model", parse_runs((self.ape_model,), "config.ape_model")[0])
    ape_fields = {f.name for f in dataclasses.fields(pe.REGISTRY[self.ape_model.method.name])}
    check("extension" in ape_fields, "config.ape_model",
          "an absolute-position table LongEmbed's extensions apply to (learned or sinusoidal)", self.ape_model.spec)
    seeds = len(self.seeds)
    finetune_labels = [r.label for r in self.finetunes]
    for ok, field, valid in (
        (seeds >= 1 and len(set(self.seeds)) == seeds, "seeds", "distinct seeds"),
        (self.eval_scales and all(s >= 1 for s in self.eval_scales), "eval_scales", "scales >= 1"),
        (0 < self.stride_fraction <= 1, "stride_fraction", "in (0, 1]"),
        (self.eval_split != self.choice_split, "choice_split", "a split other than eval_split"),
        (self.eval_docs >= 1, "eval_docs", ">= 1"),
        (self.finetune_learning_rates and min(self.finetune_learning_rates) > 0, "finetune_learning_rates",
         "positive rates"),
        (bool(self.finetunes), "finetunes", "at least one fine-tune"),
        (self.grid_finetune in finetune_labels or not self.grid_train_scales, "grid_finetune",
         f"a label of finetunes {finetune_labels}"),
        (not {r.label for r in self.pretrain_variants} & {"base", "ape", "passkey"}, "pretrain_variants",
         "labels other than base, ape and passkey (their run names)"),
        (1 <= self.variant_seeds <= seeds, "variant_seeds", f"in [1, {seeds}]"),
        (1 <= self.grid_seeds <= seeds, "grid_seeds", f"in [1, {seeds}]"),
        (0 <= self.passkey_mix <= 1, "passkey_mix", "in [0, 1]"),
        (1 <= self.retrieval_seeds <= seeds, "retrieval_seeds", f"in [1, {seeds}]"),
        (0 < self.truncation_scale < 1, "truncation_scale", "in (0, 1)"),
        (0 <= self.retrieval_mix <= 1, "retrieval_mix", "in [0, 1]"),
        (self.retrieval_min_length >= 0, "retrieval_min_length", ">= 0"),
        (self.ngram_order >= 1, "ngram_order", ">= 1"),
        (self.ngram_train_bytes >= self.ngram_order, "ngram_train_bytes", ">= ngram_order"),
        # The search reads the "validation" split (rope_lab/search/runner.py): it must be the choice split.
        (not self.longrope_search or self.choice_split == "validation", "choice_split",
         "'validation' while longrope_search is on (the search scores validation documents)"),
        (self.longrope_population >= self.longrope_top_k >= 1, "longrope_population",
         f">= longrope_top_k ({self.longrope_top_k}) >= 1"),
        (min(self.longrope_generations, self.longrope_mutations, self.longrope_crossovers) >= 0,
         "longrope_generations", "generations, mutations and crossovers >= 0"),
        (self.longrope_docs >= 1, "longrope_docs", ">= 1")):
      check(ok, f"config.{field}", valid, getattr(self, field))
    if self.base is not None:
      longest = self.train_length * max(self.eval_scales)
      check(self.eval_doc_tokens >= longest, "config.eval_doc_tokens",
            f">= the longest window ({longest} tokens), so every length scores the same tokens",
            self.eval_doc_tokens)
      check(self.retrieval_min_length == 0 or 2 <= self.retrieval_min_length <= self.train_length,
            "config.retrieval_min_length", f"0 or in [2, the training length {self.train_length}]",
            self.retrieval_min_length)
    if self.base is not None:  # every declared run's experiment is built (and checked) now
      runs.declared_runs(self, base_dir="")

  @property
  def train_length(self) -> int:
    return self.base.train.seq_len

  @property
  def base_frequency(self) -> float:
    """The rotary base of the pretrained model (every RoPE-family plan must use it)."""
    return float(getattr(self.base.encoding, "base", 10000.0))

  def lengths(self, scales) -> list[int]:
    return [self.train_length * s for s in scales]


def study_config_from_config_dict(config) -> StudyConfig:
  """configs/study.py's ConfigDict -> StudyConfig (the base section via config.py's boundary)."""
  values = config.to_dict()
  values.update({k: tuple(values[k]) for k in ("finetunes", "pretrain_variants") if k in values})
  if "base" not in values:
    raise ConfigError("study config needs a 'base' section (the pretraining experiment)")
  base = config_lib.experiment_from_config_dict(config.base)
  del values["base"]
  return dataclasses.replace(config_lib.dataclass_from_mapping(StudyConfig, values, "config"), base=base)


def save_config(cfg: StudyConfig, workdir: str) -> None:
  values = dataclasses.asdict(dataclasses.replace(cfg, base=None))
  for name in ("finetunes", "pretrain_variants"):  # as declared
    values[name] = [run.spec for run in getattr(cfg, name)]
  values["ape_model"] = cfg.ape_model.spec
  values["base"] = config_lib.experiment_to_dict(cfg.base)
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    json.dump(results_lib._plain(values), f, indent=2)  # pylint: disable=protected-access


def read_study_config(workdir: str) -> StudyConfig:
  """The StudyConfig a study directory was run with (its study_config.json)."""
  from rope_lab.evaluate.runs import experiment_from_json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    values = json.load(f)
  base = experiment_from_json(values.pop("base"))
  if "finetune_methods" in values:  # written before runs were declared: the same runs, declared
    values["finetunes"] = [f"{m}={m}" for m in values.pop("finetune_methods")]
  if values.pop("xpos", False):
    values["pretrain_variants"] = ["xpos=xpos"]
  values.update({k: tuple(values[k]) for k in ("finetunes", "pretrain_variants") if k in values})
  return dataclasses.replace(config_lib.dataclass_from_mapping(StudyConfig, values, CONFIG_FILE), base=base)
