"""The reference study as a library: train, fine-tune, evaluate, draw, report.

``run_study(cfg, workdir)`` runs every phase in order and is resumable: training runs
resume from their checkpoints, and a measurement already in ``results.jsonl`` under the
same configuration hash is not repeated. Work directory::

  runs/<name>/        training runs (base_s0, ft_pi4_lr0.001_s0, grid_pi8_lr0.001_s0, ape_s0, ...)
  arrays/             attention maps and mean q/k (.npz) for the figures
  figures/            PNG figures (plots.py)
  results.jsonl       one row per measurement (results.py)
  report.md           figures + tables + the claim-by-claim comparison (report.py)

Phases: base RoPE models (one per seed) -> the learned-APE model (and optionally an
xPos model and a passkey probe model) -> fine-tuning learning rate chosen on validation
-> PI/YaRN fine-tunes at ``finetune_scale`` and the Giraffe grid's PI fine-tunes ->
perplexity vs length on the test documents -> passkey / key-value retrieval -> attention
maps and mean q/k -> figures -> report. Test documents are only ever scored; every choice
uses validation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import numpy as np

from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab import results as results_lib
from rope_lab.data import get_tokenizer, long_documents, task_grid
from rope_lab.evaluate import attention_maps, perplexity, plans as plans_lib, retrieval
from rope_lab.evaluate.retrieval_data import passkey_mix_source
from rope_lab.evaluate.runs import TrainedRun, load_run


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """What the study trains and measures. Lengths are multiples ("scales") of a training length."""

  base: config_lib.ExperimentConfig | None = None  # the pretraining run (RoPE, short context)
  seeds: tuple[int, ...] = (0, 1, 2)  # one base model (and its fine-tunes) per seed
  eval_scales: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # evaluation windows / training length
  stride_fraction: float = 0.5  # sliding-window stride as a fraction of the window
  eval_split: str = "test"  # documents the reported numbers come from
  choice_split: str = "validation"  # documents any choice is made on
  eval_docs: int = 2  # held-out documents scored at every length
  eval_doc_tokens: int = 8192  # each truncated to this many tokens (>= the longest window)
  static_scale: float = 4.0  # target scale s of the static zero-shot methods
  finetune_methods: tuple[str, ...] = ("pi", "yarn")
  finetune_scale: int = 4  # fine-tuning context = finetune_scale x training length
  finetune_steps: int = 30
  finetune_learning_rates: tuple[float, ...] = (3e-4,)  # several: chosen on validation
  finetune_warmup_steps: int = 5
  grid_train_scales: tuple[int, ...] = (2, 4, 8)  # Giraffe grid: PI fine-tunes at these scales
  grid_seeds: int = 1  # the grid's extra fine-tunes use the first this-many seeds
  ape: bool = True  # train a learned-APE model (first seed) for LongEmbed's extensions
  xpos: bool = False  # train an xPos model (first seed) and evaluate it as trained
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

  def __post_init__(self):
    def need(ok, field, valid):
      if not ok:
        raise config_lib.ConfigError(f"config.{field} must be {valid}, got {getattr(self, field)!r}")
    need(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "distinct seeds")
    need(self.eval_scales and all(s >= 1 for s in self.eval_scales), "eval_scales", "scales >= 1")
    need(0 < self.stride_fraction <= 1, "stride_fraction", "in (0, 1]")
    need(self.eval_split != self.choice_split, "choice_split", "a split other than eval_split")
    need(self.eval_docs >= 1, "eval_docs", ">= 1")
    need(self.finetune_learning_rates and min(self.finetune_learning_rates) > 0,
         "finetune_learning_rates", "positive rates")
    need(set(self.finetune_methods) <= {"pi", "yarn"}, "finetune_methods", "a subset of (pi, yarn)")
    need(1 <= self.grid_seeds <= len(self.seeds), "grid_seeds", f"in [1, {len(self.seeds)}]")
    need(0 <= self.passkey_mix <= 1, "passkey_mix", "in [0, 1]")
    need(1 <= self.retrieval_seeds <= len(self.seeds), "retrieval_seeds", f"in [1, {len(self.seeds)}]")

  @property
  def train_length(self) -> int:
    return self.base.train.seq_len

  def lengths(self, scales) -> list[int]:
    return [self.train_length * s for s in scales]


def study_config_from_config_dict(config) -> StudyConfig:
  """configs/study.py's ConfigDict -> StudyConfig (the base section via config.py's boundary)."""
  values = config.to_dict()
  if "base" not in values:
    raise config_lib.ConfigError("study config needs a 'base' section (the pretraining experiment)")
  base = config_lib.experiment_from_config_dict(config.base)
  del values["base"]
  return dataclasses.replace(config_lib.dataclass_from_mapping(StudyConfig, values, "config"), base=base)


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A training run of the study and how it relates to the base model."""

  name: str
  kind: str  # base | finetune | ape | xpos | passkey
  seed: int
  exp: config_lib.ExperimentConfig
  method: str | None = None  # fine-tuning method
  train_scale: int = 1  # fine-tuning scale a (1: not fine-tuned)
  data_mix: float = 0.0  # passkey rows mixed into training


def _with_train(exp, **changes):
  return dataclasses.replace(exp, train=dataclasses.replace(exp.train, **changes))


def base_run(cfg: StudyConfig, seed: int, kind: str = "base") -> RunSpec:
  exp = _with_train(cfg.base, seed=seed)
  if kind == "ape":
    exp = dataclasses.replace(exp, encoding=pe.make("learned", max_length=cfg.train_length))
  elif kind == "xpos":
    exp = dataclasses.replace(exp, encoding=pe.make("xpos", base=_base_frequency(cfg)))
  elif kind == "passkey":
    rows = max(1, cfg.base.train.global_batch_size * cfg.train_length // cfg.passkey_train_length)
    exp = _with_train(exp, seq_len=cfg.passkey_train_length, global_batch_size=rows)
    return RunSpec(f"passkey_s{seed}", kind, seed, exp, data_mix=cfg.passkey_mix)
  return RunSpec(f"{kind}_s{seed}", kind, seed, exp)


def _base_frequency(cfg: StudyConfig) -> float:
  return float(getattr(cfg.base.encoding, "base", 10000.0))


def finetune_encoding(cfg: StudyConfig, method: str, scale: float) -> pe.Encoding:
  base = _base_frequency(cfg)
  if method == "pi":
    return pe.make("pi", base=base, factor=float(scale))
  return pe.make("yarn", base=base, factor=float(scale), original_max_position_embeddings=cfg.train_length)


def finetune_run(cfg: StudyConfig, seed: int, method: str, scale: int, learning_rate: float,
                 base_dir: str, prefix: str = "ft") -> RunSpec:
  """A short fine-tune of base model ``seed`` at ``scale`` x the length, same tokens per step."""
  rows = max(1, cfg.base.train.global_batch_size // scale)
  exp = dataclasses.replace(cfg.base, encoding=finetune_encoding(cfg, method, scale))
  exp = _with_train(exp, seed=seed, seq_len=cfg.train_length * scale, global_batch_size=rows,
                    steps=cfg.finetune_steps, learning_rate=learning_rate, lr_schedule="constant",
                    warmup_steps=cfg.finetune_warmup_steps, weight_decay=0.0, init_from=base_dir,
                    eval_every=0, checkpoint_every=0)
  return RunSpec(f"{prefix}_{method}{scale}_lr{learning_rate:g}_s{seed}", "finetune", seed, exp,
                 method=method, train_scale=scale)


# ----------------------------------------------------------------------------- the study


class Study:
  """One study in one work directory; each method is a phase (see the module docstring)."""

  def __init__(self, cfg: StudyConfig, workdir: str, *, log: Callable[[str], None] = print):
    if cfg.base is None:
      raise config_lib.ConfigError("StudyConfig.base (the pretraining experiment) is not set")
    self.cfg, self.workdir, self.log = cfg, workdir, log
    os.makedirs(os.path.join(workdir, "arrays"), exist_ok=True)
    self.results = results_lib.ResultsFile(os.path.join(workdir, "results.jsonl"))
    self.commit = results_lib.git_commit()
    self.done = {(r["key"], r["config_hash"]) for r in self.results.read()}
    self.tokenizer = get_tokenizer(cfg.base.data)
    self._runs: dict[str, TrainedRun] = {}
    self.finetune_lr = cfg.finetune_learning_rates[0]

  # -- bookkeeping ---------------------------------------------------------------

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  def measure_hash(self, spec: RunSpec, **settings) -> str:
    return results_lib.config_hash({"run": config_lib.experiment_to_dict(spec.exp), "mix": spec.data_mix,
                                    "eval": settings})

  def record(self, kind: str, key: str, chash: str, spec: RunSpec, metrics: dict, **fields) -> None:
    row = results_lib.make_row(kind, key, metrics=metrics, seed=spec.seed, config_hash=chash,
                               commit=self.commit, run=spec.name, run_kind=spec.kind,
                               method=spec.method, train_scale=spec.train_scale,
                               train_length=spec.exp.train.seq_len, **fields)
    self.results.append([row])
    self.done.add((key, chash))

  def train(self, spec: RunSpec) -> str:
    """Trains (or resumes, or finds finished) ``spec``; records its final losses once."""
    from rope_lab import train as train_lib  # pylint: disable=g-import-not-at-top
    workdir = self.path("runs", spec.name)
    chash = self.measure_hash(spec)
    key = f"train|{spec.name}"
    if (key, chash) in self.done:
      return workdir
    self.log(f"training {spec.name} ({spec.exp.train.steps} steps at {spec.exp.train.seq_len} tokens)")
    source = None
    if spec.data_mix:
      source = passkey_mix_source(train_lib.rope_lab_data_source(spec.exp.data), self.tokenizer,
                                  fraction=spec.data_mix, train_split=spec.exp.data.train_split,
                                  seed=spec.seed)
    start = time.perf_counter()
    result = train_lib.run(spec.exp, workdir, data_source=source)
    if result.status == "preempted":  # saved at SIGTERM; the study stops, a rerun resumes it
      from rope_lab.cli import Terminated  # pylint: disable=g-import-not-at-top
      raise Terminated()
    self.record("train", key, chash, spec, {
        "train_loss": result.train_loss, "eval_loss": result.eval_loss, "steps": result.step,
        "seconds": round(time.perf_counter() - start, 1)}, encoding=pe.to_dict(spec.exp.encoding))
    return workdir

  def trained(self, spec: RunSpec) -> TrainedRun:
    if spec.name not in self._runs:
      self._runs[spec.name] = load_run(self.path("runs", spec.name))
    return self._runs[spec.name]

  def documents(self, split: str):
    return long_documents(self.cfg.base.data, split=split, min_tokens=self.cfg.eval_doc_tokens,
                          max_docs=self.cfg.eval_docs, max_tokens=self.cfg.eval_doc_tokens,
                          tokenizer=self.tokenizer)

  # -- perplexity ----------------------------------------------------------------

  def perplexity(self, spec: RunSpec, plan: plans_lib.EncodingPlan, scales, *, split: str | None = None,
                 record: bool = True) -> dict[int, float]:
    """Loss at each scale (of the run's base training length) for ``plan``; records rows."""
    cfg = self.cfg
    split = split or cfg.eval_split
    docs = self.documents(split)
    settings = dict(split=split, docs=[d.doc_id for d in docs], doc_tokens=cfg.eval_doc_tokens,
                    stride_fraction=cfg.stride_fraction, plan=list(plan.spec))
    chash = self.measure_hash(spec, **settings)
    losses = {}
    for scale in scales:
      length = cfg.train_length * scale
      key = f"ppl|{spec.name}|{plan.label}|{length}|{split}"
      if record and (key, chash) in self.done:
        continue
      run = self.trained(spec)
      encoding = plan.encoding(length, cfg.train_length)
      result = perplexity.perplexity_at_length(
          run.model, run.params, encoding, docs, length,
          stride=perplexity.stride_for(length, cfg.stride_fraction), tokenizer=self.tokenizer)
      losses[scale] = result.loss
      if record:
        self.record("perplexity", key, chash, spec, result.metrics(), plan=plan.label,
                    plan_kind=plan_kind(plan), encoding=pe.to_dict(encoding), length=length,
                    scale=length / cfg.train_length, split=split, stride=result.stride)
    return losses

  def choose_finetune_lr(self) -> float:
    """The fine-tuning learning rate with the lowest validation loss at the fine-tuning length."""
    cfg = self.cfg
    if len(cfg.finetune_learning_rates) == 1:
      return cfg.finetune_learning_rates[0]
    seed, scores = cfg.seeds[0], {}
    base_dir = self.path("runs", base_run(cfg, seed).name)
    method = cfg.finetune_methods[0]
    chash = results_lib.config_hash({"lrs": cfg.finetune_learning_rates, "steps": cfg.finetune_steps,
                                     "run": self.measure_hash(base_run(cfg, seed)), "split": cfg.choice_split})
    earlier = results_lib.select(self.results.read(), kind="choice", config_hash=chash)
    if earlier:
      return earlier[-1]["metrics"]["chosen"]
    for lr in cfg.finetune_learning_rates:
      # The candidate with the chosen rate is the final fine-tune of this seed: trained once.
      spec = finetune_run(cfg, seed, method, cfg.finetune_scale, lr, base_dir)
      self.train(spec)
      plan = plans_lib.EncodingPlan.of("trained", pe.to_dict(spec.exp.encoding))
      loss = self.perplexity(spec, plan, [cfg.finetune_scale], split=cfg.choice_split, record=False)
      scores[lr] = loss[cfg.finetune_scale]
      self._runs.pop(spec.name, None)
    chosen = min(scores, key=scores.get)
    self.results.append([results_lib.make_row(
        "choice", f"finetune_lr|{chash}", metrics={"chosen": chosen, **{f"loss@{k:g}": v for k, v in scores.items()}},
        seed=seed, config_hash=chash, commit=self.commit, split=cfg.choice_split, method=method,
        length=cfg.train_length * cfg.finetune_scale)])
    self.log(f"fine-tuning learning rate chosen on {cfg.choice_split}: {chosen:g} ({scores})")
    return chosen

  # -- retrieval -------------------------------------------------------------------

  def passkey(self, spec: RunSpec, plan: plans_lib.EncodingPlan, lengths, depths, samples: int,
              kind: str = "passkey") -> None:
    task = "lines" if kind == "lines" else "passkey"
    chash = self.measure_hash(spec, lengths=list(lengths), depths=list(depths), samples=samples,
                              plan=list(plan.spec), task=task)
    key = f"{kind}|{spec.name}|{plan.label}"
    if (key, chash) in self.done:
      return
    run = self.trained(spec)
    # Plans scale from the length the model was pretrained at (fine-tunes: the base's).
    train_length = spec.exp.train.seq_len if spec.kind == "passkey" else self.cfg.train_length
    rows = []
    for length in lengths:
      examples = task_grid(task, self.tokenizer, [length], depths, seed=1, samples=samples)
      scores = retrieval.score_examples(run.model, run.params, plan.encoding(length, train_length),
                                        examples)
      groups = {}
      for depth, score in zip([d for d in depths for _ in range(samples)], scores):
        groups.setdefault(depth, []).append(score)
      for depth, group in groups.items():
        rows.append((length, depth, retrieval.summarize_scores(group)))
    for length, depth, metrics in rows:
      self.record(kind, f"{key}|{length}|{depth}", chash, spec, metrics, plan=plan.label,
                  plan_kind=plan_kind(plan), length=length, scale=length / train_length, depth=depth,
                  encoding=pe.to_dict(plan.encoding(length, train_length)))
    self.done.add((key, chash))

  # -- attention ------------------------------------------------------------------

  def attention(self, spec: RunSpec, plan: plans_lib.EncodingPlan, scales) -> None:
    cfg = self.cfg
    run = self.trained(spec)
    docs = self.documents(cfg.eval_split)
    for scale in scales:
      length = cfg.train_length * scale
      chash = self.measure_hash(spec, plan=list(plan.spec), docs=[d.doc_id for d in docs])
      key = f"attention|{spec.name}|{plan.label}|{length}"
      if (key, chash) in self.done:
        continue
      rows = np.stack([d.tokens[:length] for d in docs[:cfg.attention_docs]])
      maps = attention_maps.mean_attention_maps(run.model, run.params, plan.encoding(length, cfg.train_length),
                                                rows)
      mass = attention_maps.mass_by_distance(maps)
      np.savez_compressed(self.path("arrays", f"attention_{spec.name}_{plans_lib.slug(plan.label)}_{scale}x.npz"),
                          maps=attention_maps.pool_map(maps, 128), mass=mass, length=length)
      for layer, layer_mass in enumerate(mass):
        beyond = float(layer_mass[cfg.train_length:].sum())
        distances = np.arange(length)
        self.record("attention", f"{key}|{layer}", chash, spec, {
            "mass_beyond_train_length": beyond, "mean_distance": float((layer_mass * distances).sum()),
            "mass_first_token": float(maps[layer][:, 0].mean())}, plan=plan.label,
            plan_kind=plan_kind(plan), length=length, scale=scale, layer=layer)


def plan_kind(plan: plans_lib.EncodingPlan) -> str:
  """'trained' (the run's own), 'matched' (s = L/L0), 'dynamic', 'none' (plain) or 'static'."""
  if plan.label == "trained":
    return "trained"
  if plan.is_matched:
    return "matched"
  if plan.name.startswith("dynamic"):
    return "dynamic"
  if plan.name in ("rope", "xpos", "learned", "nope"):
    return "none"
  return "static"


def save_config(cfg: StudyConfig, workdir: str) -> None:
  values = dataclasses.asdict(dataclasses.replace(cfg, base=None))
  values["base"] = config_lib.experiment_to_dict(cfg.base)
  with open(os.path.join(workdir, "study_config.json"), "w") as f:
    json.dump(results_lib._plain(values), f, indent=2)  # pylint: disable=protected-access


def read_study_config(workdir: str) -> StudyConfig:
  """The StudyConfig a study directory was run with (its study_config.json)."""
  from rope_lab.evaluate.runs import experiment_from_json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "study_config.json")) as f:
    values = json.load(f)
  base = experiment_from_json(values.pop("base"))
  return dataclasses.replace(config_lib.dataclass_from_mapping(StudyConfig, values, "study_config.json"),
                             base=base)


def run_study(cfg: StudyConfig, workdir: str, *, log: Callable[[str], None] = print) -> str:
  """Runs every phase (resuming what is done) and returns the path of report.md."""
  os.makedirs(workdir, exist_ok=True)
  save_config(cfg, workdir)
  study = Study(cfg, workdir, log=log)
  timings = {}

  def phase(name, fn):
    start = time.perf_counter()
    out = fn()
    timings[name] = time.perf_counter() - start
    log(f"phase {name}: {timings[name]:.0f} s")
    return out

  phase("train base", lambda: [study.train(base_run(cfg, s)) for s in cfg.seeds])
  extra = [base_run(cfg, cfg.seeds[0], kind) for kind, on in
           (("ape", cfg.ape), ("xpos", cfg.xpos), ("passkey", cfg.passkey_mix > 0)) if on]
  phase("train extra", lambda: [study.train(spec) for spec in extra])
  study.finetune_lr = phase("choose fine-tune lr", study.choose_finetune_lr)
  finetunes = finetune_specs(study)
  phase("fine-tune", lambda: [study.train(spec) for spec in finetunes])
  phase("perplexity", lambda: evaluate_perplexity(study, extra, finetunes))
  phase("retrieval", lambda: evaluate_retrieval(study, extra, finetunes))
  phase("attention", lambda: evaluate_attention(study))
  study.results.append([results_lib.make_row(
      "timing", f"timing|{time.time():.0f}", metrics={k: round(v, 1) for k, v in timings.items()},
      seed=None, config_hash=results_lib.config_hash(dataclasses.replace(cfg, base=None)),
      commit=study.commit)])
  return write_outputs(workdir, cfg)


def write_outputs(workdir: str, cfg: StudyConfig | None = None) -> str:
  """Draws the figures and writes report.md from what ``workdir`` holds; returns the report's path."""
  from rope_lab import plots, report  # pylint: disable=g-import-not-at-top
  cfg = cfg or read_study_config(workdir)
  rows = results_lib.read_rows(os.path.join(workdir, "results.jsonl"))
  figures = plots.draw_study(rows, os.path.join(workdir, "arrays"), os.path.join(workdir, "figures"), cfg)
  return report.write_report(rows, figures, cfg, os.path.join(workdir, "report.md"))


def finetune_specs(study: Study) -> list[RunSpec]:
  cfg = study.cfg
  specs = []
  for seed in cfg.seeds:
    base_dir = study.path("runs", base_run(cfg, seed).name)
    for method in cfg.finetune_methods:
      specs.append(finetune_run(cfg, seed, method, cfg.finetune_scale, study.finetune_lr, base_dir))
  for seed in cfg.seeds[:cfg.grid_seeds]:
    base_dir = study.path("runs", base_run(cfg, seed).name)
    for scale in cfg.grid_train_scales:
      if scale != cfg.finetune_scale or "pi" not in cfg.finetune_methods:
        specs.append(finetune_run(cfg, seed, "pi", scale, study.finetune_lr, base_dir, prefix="grid"))
  return specs


def evaluate_perplexity(study: Study, extra: list[RunSpec], finetunes: list[RunSpec]) -> None:
  cfg = study.cfg
  base_freq = _base_frequency(cfg)
  zero_shot = plans_lib.rope_family_plans(cfg.train_length, base=base_freq, scale=cfg.static_scale)
  matched_pi = zero_shot[-1]
  for seed in cfg.seeds:
    spec = base_run(cfg, seed)
    for plan in zero_shot:
      study.log(f"perplexity {spec.name} {plan.label}")
      study.perplexity(spec, plan, cfg.eval_scales)
  for spec in finetunes:
    own = plans_lib.EncodingPlan.of("trained", pe.to_dict(spec.exp.encoding))
    study.log(f"perplexity {spec.name}")
    study.perplexity(spec, own, cfg.eval_scales)
    if spec.method == "pi":  # the Giraffe grid: evaluate at scale b with PI factor b
      study.perplexity(spec, matched_pi, cfg.eval_scales)
  for spec in extra:
    if spec.kind == "ape":
      for plan in plans_lib.ape_plans(cfg.train_length, max_length=cfg.train_length):
        study.log(f"perplexity {spec.name} {plan.label}")
        study.perplexity(spec, plan, cfg.eval_scales)
    elif spec.kind == "xpos":
      study.perplexity(spec, plans_lib.EncodingPlan.of("xPos", pe.to_dict(spec.exp.encoding)),
                       cfg.eval_scales)


def retrieval_plans(train_length: int, base: float, scale: float) -> list[plans_lib.EncodingPlan]:
  keep = ("RoPE", f"YaRN s={scale:g}", "Dynamic NTK", "Dynamic YaRN", "PI s=L/L0")
  return [p for p in plans_lib.rope_family_plans(train_length, base=base, scale=scale) if p.label in keep]


def evaluate_retrieval(study: Study, extra: list[RunSpec], finetunes: list[RunSpec]) -> None:
  """Passkey grid, lost-in-the-middle and key-value lines for the first seeds' base models
  (zero-shot encodings), their fine-tunes (as trained) and the probe model if any."""
  cfg = study.cfg
  base_freq = _base_frequency(cfg)
  seeds = cfg.seeds[:cfg.retrieval_seeds]
  targets = []
  for seed in seeds:
    targets += [(base_run(cfg, seed), plan)
                for plan in retrieval_plans(cfg.train_length, base_freq, cfg.static_scale)]
  targets += [(spec, plans_lib.EncodingPlan.of("trained", pe.to_dict(spec.exp.encoding)))
              for spec in finetunes if spec.seed in seeds and spec.train_scale == cfg.finetune_scale
              and spec.name.startswith("ft_")]
  targets += [(spec, plan) for spec in extra if spec.kind == "passkey"
              for plan in retrieval_plans(spec.exp.train.seq_len, base_freq, cfg.static_scale)]
  middle_depths = tuple(float(d) for d in np.linspace(0, 1, cfg.middle_depths))
  for spec, plan in targets:
    study.log(f"retrieval {spec.name} {plan.label}")
    study.passkey(spec, plan, cfg.passkey_lengths, cfg.passkey_depths, cfg.passkey_samples)
    study.passkey(spec, plan, [cfg.middle_length], middle_depths, cfg.middle_samples, kind="middle")
    study.passkey(spec, plan, cfg.lines_lengths, (0.5,), cfg.lines_samples, kind="lines")


def evaluate_attention(study: Study) -> None:
  cfg = study.cfg
  spec = base_run(cfg, cfg.seeds[0])
  keep = ("RoPE", "PI s=L/L0", f"YaRN s={cfg.static_scale:g}", "Dynamic YaRN")
  zero_shot = plans_lib.rope_family_plans(cfg.train_length, base=_base_frequency(cfg), scale=cfg.static_scale)
  for plan in [p for p in zero_shot if p.label in keep]:
    study.log(f"attention maps {plan.label}")
    study.attention(spec, plan, cfg.attention_scales)
  path = study.path("arrays", f"mean_qk_{spec.name}.npz")
  if not os.path.exists(path):
    run = study.trained(spec)
    docs = study.documents(cfg.choice_split)  # probes come from validation text
    rows = np.stack([d.tokens[:cfg.train_length] for d in docs])
    q, k = attention_maps.mean_qk(run.model, run.params, run.encoding, rows)
    np.savez_compressed(path, q=q, k=k)

