"""The reference context-extension study on the embedded King James Bible, sized for a 2-core CPU.

  python -m experiments.study --workdir=/tmp/rope_lab/study            # full: 3 seeds
  python -m experiments.study --workdir=/tmp/rope_lab/study_quick --quick   # 1 seed

(The budgets on a 2-core CPU are 45 and 10 minutes; docs/report.md records the committed
run's phase times.)

Arguments (``--config=configs/study.py:<arg>``; any field can then be overridden,
e.g. ``--config.seeds=0,1``):

  (none)  the full study: three seeds of the tiny RoPE model (1,024-piece BPE, 256 tokens,
          1,000 steps, 30% short retrieval rows), evaluated at 1x..16x (256..4096 tokens)
          under the zero-shot encodings, the declared fine-tunes at 4x (PI and YaRN on every
          seed; Giraffe power / truncated, PoSE, LongLoRA on the first), the Giraffe grid,
          the declared pretraining variants (xPos, NoPE every 4th layer, In-Context
          Pretraining's random / in-context pair), the sinusoidal-APE
          comparison, the taught retrieval tasks, passkey and key-value retrieval.
  quick   one seed, a quarter of the training, shorter fine-tunes (PI and YaRN only), one
          evaluation document, no APE model, no pretraining variants and no extra grid
          fine-tunes; the same figures and report (the other rows' claims are untestable).
  icp=false  leaves out In-Context Pretraining's pair of pretraining variants on chapter
          documents (see pretrain_variants), two of the full study's eight pretraining runs.

The pretraining run is ``configs/tiny_cpu.py``'s model and data (``config.base``).

Sweeps (``get_sweep``): the study's training runs, declared here, so that any sweep launcher
can train them (each an ``experiments.train`` run in ``<study workdir>/runs/<name>``) and the
study then only evaluates and reports. The fine-tunes start from the base models, so the two
sweeps run in this order:

  sweep=base      the base models (one per seed), the sinusoidal-APE model and the declared
                  pretraining variants (``run=variant,method=<label>``)
  sweep=finetune  the declared fine-tunes x seeds x the candidate learning rates at
                  finetune_scale, and the Giraffe grid's PI fine-tunes (every candidate rate
                  is trained: the study picks one on validation and uses those runs)

  python -m experiments.sweep --config=configs/study.py:quick,sweep=base \
      --workdir=/tmp/rope_lab/study_quick/runs --launcher=local
  python -m experiments.sweep --config=configs/study.py:quick,sweep=finetune \
      --workdir=/tmp/rope_lab/study_quick/runs --launcher=local
  python -m experiments.study --workdir=/tmp/rope_lab/study_quick --quick  # finds them trained

The passkey probe model (``passkey_mix`` > 0) trains on a mixed data source that only the
study builds, so it is not part of these sweeps. ``sweep=seeds`` instead splits the whole
study into one study per seed, each its own run of ``experiments.study``:

  python -m experiments.sweep --config=configs/study.py:quick,sweep=seeds \
      --workdir=/tmp/rope_lab/study_seeds --launcher=print
"""

import copy

import ml_collections

from configs import common, tiny_cpu

# A training run of the study, chosen by the argument (see training_run): ``run`` is its kind.
RUN_ARGS = dict(run="", seed=0, method="", scale=0, lr=0.0, icp=True)
RUN_KINDS = ("base", "ape", "variant", "finetune")
TRAINING_SWEEPS = ("base", "finetune")


# The base model (sized in benchmarks/README.md, "Sizing the study's base model"): the tiny
# model of configs/tiny_cpu.py on a 1,024-piece BPE vocabulary of the training books (about 3.3
# bytes per piece), 256-token rows (about 850 bytes), 16 rows per step.
PRETRAIN_STEPS = 1000
RETRIEVAL_MIX = 0.3  # fraction of pretraining rows replaced by short retrieval rows
TOKENIZER = "bpe"
VOCAB_SIZE = 1024
TRAIN_LENGTH = 256
ROWS_PER_STEP = 16


def base_experiment(steps: int) -> ml_collections.ConfigDict:
  base = tiny_cpu.get_config()
  base.data.tokenizer, base.data.vocab_size = TOKENIZER, VOCAB_SIZE
  base.model.vocab_size = VOCAB_SIZE
  # Evaluation during training only needs to show the loss curve; checkpoints only at the end.
  base.update(steps=steps, seq_len=TRAIN_LENGTH, global_batch_size=ROWS_PER_STEP,
              eval_every=max(steps // 3, 1), eval_batches=4, checkpoint_every=0,
              keep_checkpoints=1, async_checkpointing=False, tensorboard=False, log_every=25)
  return base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The study's config; with ``run=<kind>`` (and seed, method, scale, lr) one of its
  training runs' experiment config instead (what ``sweep=base|finetune`` runs)."""
  arg = common.parse_arg(arg, "configs/study.py", quick=False, sweep="", **RUN_ARGS)
  config = study_config(arg.quick, arg.icp)
  if arg.run:
    return training_run(config, arg.run, seed=arg.seed, method=arg.method, scale=arg.scale,
                        lr=arg.lr, where="configs/study.py")
  return config


def study_config(quick: bool, icp: bool) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base = base_experiment(steps=PRETRAIN_STEPS)
  config.seeds = (0, 1, 2)
  config.eval_scales = (1, 2, 4, 8, 16)
  config.stride_fraction = 0.5
  config.eval_split = "test"
  config.choice_split = "validation"
  # The KJV test books with >= 4096 BPE tokens, by id: 2 Samuel, 1 Kings, 2 Kings, Isaiah,
  # 1 Timothy (Habakkuk, 2,902 tokens, and Jude, 1,338, are shorter than the longest window).
  config.eval_docs = 5
  config.eval_doc_tokens = TRAIN_LENGTH * 16
  config.static_scale = 4.0
  config.finetune_scale = 4
  config.finetunes = finetunes(train_length=config.base.seq_len, scale=config.finetune_scale)
  config.grid_finetune = "pi"  # the Giraffe grid fine-tunes with this declared fine-tune at every scale
  config.pretrain_variants = pretrain_variants(rope_base=config.base.pe.base, icp=icp)
  config.variant_seeds = 1
  config.finetune_steps = PRETRAIN_STEPS // 20  # 5% of the pretraining steps, same tokens per step
  # Candidates tried on validation with PI on the first seed; the best is used for all.
  config.finetune_learning_rates = (1e-3, 3e-3)
  config.finetune_warmup_steps = 5
  config.grid_train_scales = (2, 4)
  config.grid_seeds = 1
  config.ape = True
  # The absolute-position model LongEmbed's extensions are applied to, declared as the variants
  # are: sinusoidal APE with its sqrt(d_model) embedding multiplier, trained 3x the base models'
  # steps. LongEmbed's row compares extensions beyond L only once the model retrieves the taught
  # passkey inside L (95%); with the base models' 1,000 steps it did so 26-62% of the time, with
  # 2,000 steps 78-93%, and more retrieval rows made it worse, not better (benchmarks/README.md,
  # "Absolute positions at this budget"). The longer training favours the APE side of the contrast.
  config.ape_model = common.sinusoidal_ape_model(config.base.model.d_model) + f" | steps={3 * PRETRAIN_STEPS}"
  config.retrieval_seeds = 1
  # Short retrieval rows taught in pretraining (short passkey, MQAR; loss on the answers), and
  # their evaluation from inside the training length outwards: 100 examples per cell.
  config.retrieval_mix = RETRIEVAL_MIX
  # Each retrieval row packs examples of 64 to 256 tokens (each from position 0), so the answer is
  # taught at every position up to L; fine-tunes keep the mix (examples still no longer than L).
  config.retrieval_min_length = 64
  config.finetune_retrieval = True
  config.short_retrieval_lengths = (64, 128, 256, 512, 1024)
  config.short_retrieval_depths = (0.0, 0.25, 0.5, 0.75, 1.0)
  config.short_retrieval_samples = 20
  # The classic passkey prompt (about 50 BPE tokens of instructions), never taught.
  config.passkey_lengths = (256, 512, 1024)
  config.passkey_depths = (0.0, 0.25, 0.5, 0.75, 1.0)
  config.passkey_samples = 2
  config.middle_length = 256
  config.middle_depths = 11
  config.middle_samples = 2
  config.lines_lengths = (256, 512, 1024)
  config.lines_samples = 4
  config.passkey_mix = 0.0  # the separate passkey probe model: replaced by retrieval_mix
  config.passkey_train_length = 256
  config.attention_scales = (1, 4, 16)
  config.attention_docs = 2
  config.analytic_scale = 16
  # LongRoPE's factor search on seed 0's base model for static_scale x 256 tokens, validation
  # books only: 32 + 8 x 32 = 288 candidates (the paper: 64 + 40 x 32), 4 books per candidate.
  config.longrope_search = True
  config.longrope_population = 32
  config.longrope_generations = 8
  config.longrope_mutations = 16
  config.longrope_crossovers = 16
  config.longrope_top_k = 16
  config.longrope_docs = 4
  if quick:
    config.base = base_experiment(steps=PRETRAIN_STEPS // 4)
    config.seeds = (0,)
    config.eval_docs = 1
    config.finetune_steps = PRETRAIN_STEPS // 80
    config.short_retrieval_lengths = (128, 256, 512)
    config.short_retrieval_samples = 4
    config.finetune_learning_rates = (1e-3,)
    config.grid_train_scales = (4,)
    config.ape = False
    config.pretrain_variants = ()  # each is a whole pretraining run
    # PI and YaRN only (the fine-tunes of every seed); each secondary fine-tune is a run of its own.
    config.finetunes = config.finetunes[:2]
    config.passkey_lengths = (256, 512, 1024)
    config.passkey_samples = 1
    config.middle_samples = 1
    config.lines_lengths = (512, 1024)
    config.lines_samples = 2
    config.attention_docs = 1
    config.update(longrope_population=16, longrope_generations=4, longrope_mutations=8, longrope_crossovers=8,
                  longrope_top_k=8, longrope_docs=2)  # 80 candidates
  return config


# ----------------------------------------------------------------------------- declared runs
# 'label=encoding[:param=value...] [| field=value ...]' (rope_lab/study/declarations.py): encoding
# parameters left out take the base model's rotary base and training length, and in a fine-tune
# factor = finetune_scale; length fields of a fine-tune are multiples of the fine-tune length.


def finetunes(train_length: int, scale: int) -> tuple[str, ...]:
  return (
      "pi=pi",  # Position Interpolation (Chen et al. 2023)
      "yarn=yarn",  # YaRN (Peng et al. 2023)
      # Giraffe (Pal et al. 2023; abacusai/Long-Context python/models/interpolate.py): the power
      # basis is applied on its own there (no linear factor), the truncated basis on top of the
      # linear factor, cut at a wavelength of the training length, zero below b / 8, rho = b / 16.
      # The secondary fine-tunes (one seed each: ``| seeds=1``) compare with the first seed's PI.
      "power=power:factor=1:power=0.5 | seeds=1",
      f"truncated=truncated:cutoff_wavelength={train_length}:zero_ratio=8:rho_ratio=16 | seeds=1",
      # PoSE (Zhu et al. 2023): PI at s, rows of the training length whose positions skip to span s x L.
      f"pose=pi | seq_len={1 / scale:g} | pose_target_length=1 | seeds=1",
      # LongLoRA (Chen et al. 2023): PI at s, rank-8 adapters on q/k/v/o, embeddings and norms trained,
      # S2-Attn in groups of a quarter of the window while training.
      "longlora=pi | lora_rank=8 | s2_attn_group_fraction=0.25 | seeds=1",
  )


def pretrain_variants(rope_base: float, icp: bool) -> tuple[str, ...]:
  variants = (
      "xpos=xpos",  # xPos (Sun et al. 2022), evaluated as trained
      # NoPE every 4th layer, RoPE elsewhere (Llama 4's iRoPE pattern; 'L' = RoPE with local_base).
      f"nope4=per_layer:layer_pattern=LLLN:local_base={rope_base:g}",
  )
  # In-Context Pretraining (Shi et al. 2023): one stream of documents, in random or related order.
  # The documents are chapters (``kjv_chapters``: the same text and tokenizer as the base models'
  # books, the same held-out books), so about a quarter of the 256-token rows span two documents
  # and their order can matter; with whole books about 1 row in 80 did. Two more pretraining
  # runs (about 9 minutes each on 2 cores); ``icp=false`` leaves them out.
  if icp:
    variants += ("icp_random=rope | data.dataset=kjv_chapters | data.packing=concat | data.ordering=random",
                 "icp_in_context=rope | data.dataset=kjv_chapters | data.packing=concat | data.ordering=in_context")
  return variants


def get_entry_point(arg: str | None = None) -> str:
  """The study's training runs are experiments.train runs; a sweep of studies runs the study."""
  arg = common.parse_arg(arg, "configs/study.py", quick=False, sweep="", **RUN_ARGS)
  return "experiments.train" if arg.run or arg.sweep in TRAINING_SWEEPS else "experiments.study"


def get_sweep(arg: str | None = None) -> list[dict]:
  """``sweep=base`` / ``sweep=finetune``: the study's training runs; ``sweep=seeds``: the
  study's seeds as separate studies (the grids inside each stay its own)."""
  arg = common.parse_arg(arg, "configs/study.py", quick=False, sweep="", **RUN_ARGS)
  config = study_config(arg.quick, arg.icp)
  if arg.sweep in TRAINING_SWEEPS:
    return training_sweep(config, arg.sweep)
  if arg.sweep != "seeds":
    raise ValueError(f"configs/study.py: sweep={arg.sweep!r}; its sweeps: base, finetune, seeds")
  return common.sweep("config.seeds", [(seed,) for seed in config.seeds])


# ----------------------------------------------------------------------------- training runs
# The study's runs as sweep points, for any study config (tests/tiny_study_config.py uses
# these too). rope_lab/study/runs.py builds the same experiments from the typed StudyConfig;
# tests/test_study_sweep.py checks that both give the same names and the same experiments,
# which is what lets the study find a run trained by a sweep and skip it.


def run_name(kind: str, seed: int, method: str = "", scale: int = 0, lr: float = 0.0,
             grid: bool = False) -> str:
  """``base_s0``, ``ape_s0``, ``xpos_s0`` (a variant: its label), ``ft_pi4_lr0.001_s0``, ``grid_pi8_lr0.001_s0``."""
  if kind == "variant":
    return f"{method}_s{seed}"
  if kind != "finetune":
    return f"{kind}_s{seed}"
  return f"{'grid' if grid else 'ft'}_{method}{scale}_lr{lr:g}_s{seed}"


def _run_point(name: str, kind: str, seed: int, **finetune) -> dict:
  point = {"name": name, "run": kind, "seed": seed, **finetune}
  if kind == "finetune":  # starts from its seed's base model, a sibling in the sweep directory
    point["config.init_from"] = "{sweep_dir}/" + run_name("base", seed)
  return point


def _declared(config: ml_collections.ConfigDict, field: str):
  """The declared runs of ``field``, parsed as the study parses them (loading this file stays light:
  rope_lab is imported only when a sweep or a run is asked for)."""
  from rope_lab.study import declarations  # pylint: disable=g-import-not-at-top
  return declarations.parse_runs(tuple(config.get(field, ())), f"config.{field}")


def _declared_one(spec: str, field: str):
  from rope_lab.study import declarations  # pylint: disable=g-import-not-at-top
  return declarations.parse_run(spec, f"config.{field}")


def training_sweep(config: ml_collections.ConfigDict, which: str) -> list[dict]:
  """The points of ``sweep=base`` or ``sweep=finetune`` for the study ``config``."""
  if which not in TRAINING_SWEEPS:
    raise ValueError(f"sweep={which!r}: the study's training sweeps are {', '.join(TRAINING_SWEEPS)}")
  seeds = list(config.seeds)
  if which == "base":
    variants = [(run.label, seed) for run in _declared(config, "pretrain_variants")
                for seed in run.seeds_of(seeds, config.get("variant_seeds", 1))]
    return ([_run_point(run_name("base", s), "base", s) for s in seeds]
            + ([_run_point(run_name("ape", seeds[0]), "ape", seeds[0])] if config.ape else [])
            + [_run_point(run_name("variant", s, label), "variant", s, method=label) for label, s in variants])
  lrs = list(config.finetune_learning_rates)
  main = [dict(seed=seed, method=run.label, lr=lr) for seed in seeds for run in _declared(config, "finetunes")
          for lr in lrs if seed in run.seeds_of(seeds)]
  grid_scales = [s for s in config.grid_train_scales if s != config.finetune_scale]
  grid = common.product(common.sweep("seed", seeds[:config.grid_seeds]),
                        common.sweep("scale", grid_scales), common.sweep("lr", lrs)) if grid_scales else []
  points = [_run_point(run_name("finetune", p["seed"], p["method"], config.finetune_scale, p["lr"]),
                       "finetune", p["seed"], method=p["method"], scale=config.finetune_scale, lr=p["lr"])
            for p in main]
  points += [_run_point(run_name("finetune", p["seed"], config.grid_finetune, p["scale"], p["lr"], grid=True),
                        "finetune", p["seed"], method=config.grid_finetune, scale=p["scale"], lr=p["lr"])
             for p in grid]
  return points


def _apply_declaration(run: ml_collections.ConfigDict, declared, *, length: int, train_length: int,
                       defaults: dict, **train_changes) -> None:
  """``run`` (an experiment ConfigDict) changed as rope_lab/study/declarations.py's declared_experiment."""
  values = declared.section_values(length)
  train = {"seq_len": length, **train_changes, **values["train"]}
  if "global_batch_size" not in values["train"]:
    train["global_batch_size"] = max(1, run.global_batch_size * train_length // train["seq_len"])
  run.update(train)
  run.data.update(values["data"])
  run.model.update(values["model"])
  run.pe = common.pe_config(declared.method.name, **declared.encoding_params(defaults))


def _with_retrieval_rows(config: ml_collections.ConfigDict, run: ml_collections.ConfigDict, kind: str) -> None:
  """The study's short retrieval rows in ``run``'s data, as rope_lab/study/runs.py's with_retrieval_rows."""
  if not config.get("retrieval_mix", 0.0) or (kind == "finetune" and not config.get("finetune_retrieval", False)):
    return
  shortest = config.get("retrieval_min_length", 0)
  run.data.update(retrieval_mix=config.retrieval_mix, retrieval_min_length=shortest,
                  retrieval_max_length=config.base.seq_len + 1 if shortest else 0)


def training_run(config: ml_collections.ConfigDict, kind: str, *, seed: int, method: str = "",
                 scale: int = 0, lr: float = 0.0, where: str = "study config") -> ml_collections.ConfigDict:
  """The experiment config of one of the study's runs (as rope_lab/study/runs.py builds it)."""
  if kind not in RUN_KINDS:
    raise ValueError(f"{where}: argument 'run' must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
  run = copy.deepcopy(config.base)
  train_length = run.seq_len
  base = run.pe.get("base", None) or 10000.0  # as StudyConfig.base_frequency
  defaults = {"base": float(base), "original_max_position_embeddings": train_length, "max_length": train_length}
  run.seed = seed
  _with_retrieval_rows(config, run, kind)
  if kind == "ape":
    _apply_declaration(run, _declared_one(config.ape_model, "ape_model"), length=train_length,
                       train_length=train_length, defaults=defaults)
  elif kind == "variant":
    declared = {r.label: r for r in _declared(config, "pretrain_variants")}
    if method not in declared:
      raise ValueError(f"{where}: run=variant needs method=<a label of pretrain_variants {sorted(declared)}>, "
                       f"got method={method!r}")
    _apply_declaration(run, declared[method], length=train_length, train_length=train_length, defaults=defaults)
  elif kind == "finetune":
    declared = {r.label: r for r in _declared(config, "finetunes")}
    if method not in declared or scale < 1 or lr <= 0:
      raise ValueError(f"{where}: run=finetune needs method=<a label of finetunes {sorted(declared)}>, "
                       f"scale >= 1 and lr > 0, got method={method!r}, scale={scale}, lr={lr}")
    _apply_declaration(run, declared[method], length=train_length * scale, train_length=train_length,
                       defaults={**defaults, "factor": float(scale)}, steps=config.finetune_steps,
                       learning_rate=lr, lr_schedule="constant", warmup_steps=config.finetune_warmup_steps,
                       weight_decay=0.0, eval_every=0, checkpoint_every=0)
  return run
