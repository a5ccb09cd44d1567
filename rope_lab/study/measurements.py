"""The measurement cache of a study: each measurement is made once and recorded as rows.

A :class:`Study` is one study in one work directory. Training runs resume from their
checkpoints; a measurement whose key (kind, run, plan id, length, ...) is already in
``results.jsonl`` under the same configuration hash is not repeated. Every row names
its plan by id (``plan_id``, the join key) and by label (``plan``, for display).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import numpy as np

from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab import results as results_lib
from rope_lab.data import get_tokenizer, load_token_store, long_documents, task_grid
from rope_lab.evaluate import attention_maps, ngram, perplexity, plans as plans_lib, retrieval
from rope_lab.data.synthetic import retrieval_training_row
from rope_lab.evaluate.retrieval_data import passkey_mix_source
from rope_lab.evaluate.runs import TrainedRun, load_run
from rope_lab.errors import check
from rope_lab.study.config import StudyConfig
from rope_lab.study.runs import RunSpec, base_run, extra_runs, finetune_run, trained_plan

RESULTS_FILE = "results.jsonl"
# The attention maps keep the last this-many queries against the last this-many keys of each
# window at token resolution (the far past is in the attention mass by distance, also saved).
ATTENTION_PANEL_TOKENS = 128


def _relocatable(values: dict) -> dict:
  """An experiment dict whose ``init_from`` keeps only the run's name: a sweep that trained
  the study's runs in a bucket and the copy under ``<workdir>/runs`` name the same base."""
  init_from = values.get("train", {}).get("init_from")
  if not init_from:
    return values
  return {**values, "train": {**values["train"], "init_from": init_from.rstrip("/").rsplit("/", 1)[-1]}}


def trained_elsewhere(spec: RunSpec, workdir: str) -> dict | None:
  """The final metrics of ``spec`` if ``workdir`` holds it finished with exactly its
  experiment, trained outside the study (``sweep=base|finetune`` of configs/study.py);
  else None. A run with a different experiment is left to the trainer's resume check."""
  from rope_lab.training.checkpoint import committed_latest_step  # pylint: disable=g-import-not-at-top
  from rope_lab.sweep.local import run_metrics  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(workdir, "config.json")
  if spec.data_mix or not os.path.exists(config_path):
    return None  # a mixed data source exists only inside the study
  if committed_latest_step(workdir) != spec.exp.train.steps:
    return None
  with open(config_path, encoding="utf-8") as f:
    stored = _relocatable(json.load(f))
  if stored != _relocatable(json.loads(json.dumps(config_lib.experiment_to_dict(spec.exp)))):
    return None
  metrics = run_metrics(workdir)
  return {"train_loss": metrics.get("train_loss"), "eval_loss": metrics.get("eval_loss"),
          "steps": metrics.get("steps", spec.exp.train.steps), "seconds": 0.0}


class Study:
  """One study in one work directory: its results file, its runs and the measurements on them."""

  def __init__(self, cfg: StudyConfig, workdir: str, *, log: Callable[[str], None] = print):
    if cfg.base is None:
      raise config_lib.ConfigError("StudyConfig.base (the pretraining experiment) is not set")
    self.cfg, self.workdir, self.log = cfg, workdir, log
    os.makedirs(os.path.join(workdir, "arrays"), exist_ok=True)
    self.results = results_lib.ResultsFile(os.path.join(workdir, RESULTS_FILE))
    self.commit = results_lib.git_commit()
    self.done = {(r["key"], r["config_hash"]) for r in self.results.read()}
    self.tokenizer = get_tokenizer(cfg.base.data)
    self._runs: dict[str, TrainedRun] = {}
    self.finetune_lr = cfg.finetune_learning_rates[0]
    for spec in extra_runs(cfg):  # a run that would tokenize differently fails here, before any training
      self.check_tokenizer(spec)
    self.documents(cfg.eval_split)  # too few long test documents fail here, before any training
    if cfg.retrieval_mix:  # a training row too short for the tasks fails here, before any training
      for task in ("short_passkey", "mqar"):
        for length in {cfg.train_length + 1, cfg.retrieval_min_length or cfg.train_length + 1}:
          retrieval_training_row(task, self.tokenizer, length, np.random.default_rng(0))

  def check_tokenizer(self, spec: RunSpec) -> None:
    """Every model is scored on the base models' tokens, so a run whose data (another dataset,
    such as the chapter documents of In-Context Pretraining) must tokenize exactly as theirs."""
    data = spec.exp.data
    if data == self.cfg.base.data or get_tokenizer(data).cache_key == self.tokenizer.cache_key:
      return
    raise config_lib.ConfigError(
        f"study run {spec.name!r}: its data (dataset {data.dataset!r}, tokenizer {data.tokenizer!r}) "
        f"tokenizes differently from the base models' ({self.cfg.base.data.dataset!r}, "
        f"{self.cfg.base.data.tokenizer!r}); every model is scored on the base models' tokens")

  # -- bookkeeping ---------------------------------------------------------------

  def path(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  def measure_hash(self, spec: RunSpec, **settings) -> str:
    # The run's retrieval rows are part of its experiment (DataConfig.retrieval_mix).
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
    from rope_lab.training import loop as train_lib  # pylint: disable=g-import-not-at-top
    workdir = self.path("runs", spec.name)
    chash = self.measure_hash(spec)
    key = f"train|{spec.name}"
    if (key, chash) in self.done:
      return workdir
    metrics = trained_elsewhere(spec, workdir)
    if metrics is not None:
      self.log(f"{spec.name}: already trained in {workdir} (by a sweep of the study's runs)")
      self.record("train", key, chash, spec, metrics, encoding=pe.to_dict(spec.exp.encoding))
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
      from rope_lab.running.cli import Terminated  # pylint: disable=g-import-not-at-top
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
    return evaluation_documents(self.cfg, split, self.tokenizer)

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
      length = int(round(cfg.train_length * scale))  # scales below 1 (the truncation line) too
      key = f"ppl|{spec.name}|{plan.id}|{length}|{split}"
      if record and (key, chash) in self.done:
        continue
      run = self.trained(spec)
      encoding = plan.encoding(length, cfg.train_length)
      result = perplexity.perplexity_at_length(
          run.model, run.params, encoding, docs, length,
          stride=perplexity.stride_for(length, cfg.stride_fraction), tokenizer=self.tokenizer)
      losses[scale] = result.loss
      if record:
        self.record("perplexity", key, chash, spec, result.metrics(), plan_id=plan.id, plan=plan.label,
                    plan_kind=plan_kind(plan), encoding=pe.to_dict(encoding), length=length,
                    scale=length / cfg.train_length, split=split, stride=result.stride,
                    docs=settings["docs"], windows=result.per_window)
    return losses

  def choose_finetune_lr(self) -> float:
    """The fine-tuning learning rate with the lowest validation loss at the fine-tuning length."""
    cfg = self.cfg
    if len(cfg.finetune_learning_rates) == 1:
      return cfg.finetune_learning_rates[0]
    seed, scores = cfg.seeds[0], {}
    base_dir = self.path("runs", base_run(cfg, seed).name)
    method = cfg.finetunes[0].label
    chash = results_lib.config_hash({"lrs": cfg.finetune_learning_rates, "steps": cfg.finetune_steps,
                                     "run": self.measure_hash(base_run(cfg, seed)), "split": cfg.choice_split})
    earlier = results_lib.select(self.results.read(), kind="choice", config_hash=chash)
    if earlier:
      return earlier[-1]["metrics"]["chosen"]
    for lr in cfg.finetune_learning_rates:
      # The candidate with the chosen rate is the final fine-tune of this seed: trained once.
      spec = finetune_run(cfg, seed, method, cfg.finetune_scale, lr, base_dir)
      self.train(spec)
      loss = self.perplexity(spec, trained_plan(spec), [cfg.finetune_scale], split=cfg.choice_split, record=False)
      scores[lr] = loss[cfg.finetune_scale]
      self._runs.pop(spec.name, None)
    chosen = min(scores, key=scores.get)
    self.results.append([results_lib.make_row(
        "choice", f"finetune_lr|{chash}", metrics={"chosen": chosen, **{f"loss@{k:g}": v for k, v in scores.items()}},
        seed=seed, config_hash=chash, commit=self.commit, split=cfg.choice_split, method=method,
        length=cfg.train_length * cfg.finetune_scale)])
    self.log(f"fine-tuning learning rate chosen on {cfg.choice_split}: {chosen:g} ({scores})")
    return chosen

  # -- baselines -------------------------------------------------------------------

  def ngram_baseline(self, order: int, train_bytes: int) -> None:
    """An order-``order`` byte Kneser-Ney model fitted on the training split, scored on the
    evaluation documents' text (each document on its own), and the training split's unigram entropy."""
    cfg = self.cfg
    docs = self.documents(cfg.eval_split)
    chash = results_lib.config_hash({"data": config_lib.experiment_to_dict(cfg.base)["data"], "order": order,
                                     "train_bytes": train_bytes, "docs": [d.doc_id for d in docs]})
    key = f"baseline|ngram{order}|{cfg.eval_split}"
    if (key, chash) in self.done:
      return
    start = time.perf_counter()
    train = split_text(self.cfg.base.data, "train", self.tokenizer, train_bytes)
    model = ngram.KneserNey(order=order).fit(train)
    texts = [self.tokenizer.decode(d.tokens).encode("utf-8") for d in docs]
    bits = sum(model.bits(t) for t in texts)
    num_bytes = sum(len(t) for t in texts)
    metrics = {"bits_per_byte": bits / num_bytes, "unigram_entropy": ngram.unigram_entropy(train),
               "bytes": num_bytes, "train_bytes": len(train), "seconds": round(time.perf_counter() - start, 1)}
    self.results.append([results_lib.make_row("baseline", key, metrics=metrics, seed=None, config_hash=chash,
                                              commit=self.commit, split=cfg.eval_split, order=order)])
    self.done.add((key, chash))
    self.log(f"{order}-gram baseline: {metrics['bits_per_byte']:.3f} bits/byte; unigram entropy "
             f"{metrics['unigram_entropy']:.3f}")

  # -- retrieval -------------------------------------------------------------------

  def passkey(self, spec: RunSpec, plan: plans_lib.EncodingPlan, lengths, depths, samples: int,
              kind: str = "passkey") -> None:
    task = kind if kind in ("lines", "short_passkey", "mqar") else "passkey"
    chash = self.measure_hash(spec, lengths=list(lengths), depths=list(depths), samples=samples,
                              plan=list(plan.spec), task=task)
    key = f"{kind}|{spec.name}|{plan.id}"
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
      self.record(kind, f"{key}|{length}|{depth}", chash, spec, metrics, plan_id=plan.id, plan=plan.label,
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
      chash = self.measure_hash(spec, plan=list(plan.spec), docs=[d.doc_id for d in docs],
                                panel_tokens=ATTENTION_PANEL_TOKENS)
      key = f"attention|{spec.name}|{plan.id}|{length}"
      if (key, chash) in self.done:
        continue
      rows = np.stack([d.tokens[:length] for d in docs[:cfg.attention_docs]])
      maps = attention_maps.mean_attention_maps(run.model, run.params, plan.encoding(length, cfg.train_length),
                                                rows)
      mass = attention_maps.mass_by_distance(maps)
      np.savez_compressed(self.path("arrays", attention_file(spec.name, plan.id, scale)),
                          last_block=attention_maps.last_block(maps, ATTENTION_PANEL_TOKENS), mass=mass,
                          length=length)
      for layer, layer_mass in enumerate(mass):
        beyond = float(layer_mass[cfg.train_length:].sum())
        distances = np.arange(length)
        self.record("attention", f"{key}|{layer}", chash, spec, {
            "mass_beyond_train_length": beyond, "mean_distance": float((layer_mass * distances).sum()),
            "mass_first_token": float(maps[layer][:, 0].mean())}, plan_id=plan.id, plan=plan.label,
            plan_kind=plan_kind(plan), length=length, scale=scale, layer=layer)


def evaluation_documents(cfg: StudyConfig, split: str, tokenizer) -> list:
  """The documents every length is scored on: of ``split``'s documents with at least
  ``eval_doc_tokens`` tokens (>= the longest window), the first ``eval_docs`` by document id,
  each cut to its first ``eval_doc_tokens`` tokens.

  Shorter documents are skipped rather than scored only at the lengths they cover, so every
  window length sees exactly the same tokens. The choice depends only on the data and the
  config (never on a model), and sorting by id makes it independent of the stored order.
  """
  docs = sorted(long_documents(cfg.base.data, split=split, min_tokens=cfg.eval_doc_tokens,
                               max_tokens=cfg.eval_doc_tokens, tokenizer=tokenizer), key=lambda d: d.doc_id)
  check(len(docs) >= cfg.eval_docs, "config.eval_docs",
        f"at most the {len(docs)} documents of split {split!r} with >= eval_doc_tokens={cfg.eval_doc_tokens} "
        f"tokens ({', '.join(d.doc_id for d in docs)})", cfg.eval_docs)
  return docs[:cfg.eval_docs]


def split_text(data_cfg, split: str, tokenizer, max_bytes: int) -> bytes:
  """The UTF-8 text of ``split``'s documents, in dataset order, up to ``max_bytes`` bytes."""
  store = load_token_store(data_cfg, split, tokenizer)
  parts, size = [], 0
  for index in range(store.num_docs):
    text = tokenizer.decode(store.document(index)).encode("utf-8")
    parts.append(text[:max_bytes - size])
    size += len(parts[-1])
    if size >= max_bytes:
      break
  return b"".join(parts)


def plan_kind(plan: plans_lib.EncodingPlan) -> str:
  """'trained' (the run's own), 'matched' (s = L/L0), 'dynamic', 'none' (plain) or 'static'."""
  if plan.id == plans_lib.TRAINED:
    return "trained"
  if plan.is_matched:
    return "matched"
  if plan.name.startswith("dynamic"):
    return "dynamic"
  if plan.name in ("rope", "xpos", "learned", "nope"):
    return "none"
  return "static"


def attention_file(run: str, plan_id: str, scale: int) -> str:
  """The arrays/ file holding a run's attention maps under one plan at one scale."""
  return f"attention_{run}_{plan_id}_{scale}x.npz"
