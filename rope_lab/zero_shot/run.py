"""Runs the zero-shot study on a pretrained model: perplexity, attention, retrieval, heatmaps.

Every measurement becomes one row of ``<workdir>/results.jsonl`` (``rope_lab.results``),
keyed so that a study started again in the same directory skips what it already holds.
``rope_lab.zero_shot.report`` then draws the figures and writes ``report.md`` from the rows
alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np

from rope_lab.data import assets

from rope_lab.model import generate
from rope_lab import results as results_lib
from rope_lab.data.tokenizers import HFTokenizer
from rope_lab.evaluate import analytic
from rope_lab.evaluate.attention_maps import mean_qk
from rope_lab.evaluate.perplexity import eval_model_config
from rope_lab.interop import gguf
from rope_lab.zero_shot import config as config_lib
from rope_lab.zero_shot import documents as documents_lib
from rope_lab.zero_shot import measure

RESULTS_FILE = "results.jsonl"
HEATMAP_POINTS = 48
QK_PROBE_TOKENS = 2048


def model_path(cfg: config_lib.ZeroShotConfig) -> str:
  if cfg.model == "smollm2":
    return assets.smollm2_gguf()
  if not os.path.isfile(cfg.model):
    raise FileNotFoundError(f"study_real: model: no GGUF file {cfg.model!r} (or use 'smollm2')")
  return cfg.model


@dataclasses.dataclass
class _Forward:
  label: str
  encoding: object
  length: int
  score: measure.WindowScore


class Study:
  """The study's state while it runs: model, tokenizer, documents, the results file."""

  def __init__(self, cfg: config_lib.ZeroShotConfig, workdir: str, log=print):
    self.cfg, self.workdir, self.log = cfg, workdir, log
    config_lib.save(cfg, workdir)
    self.results = results_lib.ResultsFile(os.path.join(workdir, RESULTS_FILE))
    self.config_hash = results_lib.config_hash(cfg)
    self.commit = results_lib.git_commit()
    path = model_path(cfg)
    self.model = gguf.load(path, **({"n_layers": cfg.layers} if cfg.layers else {}))
    self.tokenizer = HFTokenizer("gguf:" + path)
    self.training_length = int(self.model.hf_config["max_position_embeddings"])
    self.defaults = {"base": float(self.model.encoding.base),
                     "original_max_position_embeddings": self.training_length}
    self.encodings = {m.label: m.encoding(self.defaults) for m in cfg.methods}
    self.done = self.results.done_keys(self.config_hash)

  # -- rows

  def _append(self, kind: str, key: str, metrics: dict, **fields) -> None:
    row = results_lib.make_row(kind, key, metrics=metrics, seed=self.cfg.seed, config_hash=self.config_hash,
                               commit=self.commit, training_length=self.training_length, **fields)
    self.results.append([row])
    self.done.add(key)

  # -- perplexity and attention

  def perplexity(self) -> None:
    cfg = self.cfg
    for doc_index, spec in enumerate(cfg.documents):
      doc = documents_lib.load_document(spec, self.tokenizer, cfg.max_length + 1)
      nbytes = np.asarray([self.tokenizer.count_bytes([t]) for t in doc.tokens[1:]], np.float64)
      forwards: list[_Forward] = []
      for method in cfg.methods:
        encoding = self.encodings[method.label]
        for length in sorted(cfg.lengths, reverse=True):
          key = f"perplexity/{method.label}/{spec}/{length}"
          attention_key = f"attention/{method.label}/{length}"
          wants_attention = doc_index == 0 and length in cfg.attention_lengths and attention_key not in self.done
          if key in self.done and not wants_attention:
            continue
          forward = self._serving_forward(forwards, encoding, length)
          if forward is None:
            forward = self._run_forward(forwards, method.label, encoding, doc, length, with_attention=doc_index == 0)
          if key not in self.done:
            self._perplexity_row(key, method.label, spec, doc_index, length, forward, nbytes)
          if wants_attention and length in forward.score.attention:
            self._append("attention", attention_key, {"mass": forward.score.attention[length].tolist()},
                         method=method.label, length=length, queries=cfg.attention_queries,
                         edges=list(measure.attention_edges(cfg.max_length)), served_by=forward.label,
                         forward_length=forward.length)

  def _serving_forward(self, forwards, encoding, length):
    for f in forwards:
      if f.length >= length and measure.acts_alike(self.model.config, encoding, length, f.encoding, f.length, length):
        return f
    return None

  def _run_forward(self, forwards, label, encoding, doc, length, with_attention):
    cfg = self.cfg
    ends = tuple(e for e in cfg.attention_lengths if e <= length) if with_attention else ()
    start = time.perf_counter()
    hooks = measure.encoding_hooks(self.model.config, encoding, length)
    score = measure.score_window(self.model.config, self.model.params, doc.tokens[:length + 1], hooks,
                                 query_ends=ends, n_queries=cfg.attention_queries, max_length=cfg.max_length)
    self.log(f"  {label} {doc.name} forward at {length} tokens: {time.perf_counter() - start:.0f} s")
    forward = _Forward(label, encoding, length, score)
    forwards.append(forward)
    return forward

  def _perplexity_row(self, key, label, spec, doc_index, length, forward, nbytes):
    block = self.cfg.block
    losses = forward.score.losses[:length].astype(np.float64)
    nll = losses.reshape(-1, block).sum(axis=1)
    nb = nbytes[:length].reshape(-1, block).sum(axis=1)
    total, total_bytes = float(losses.sum()), float(nb.sum())
    half = length // 2
    metrics = {"loss": total / length, "perplexity": math.exp(min(total / length, 700.0)),
               "bits_per_byte": total / (math.log(2) * total_bytes), "tokens": length, "bytes": int(total_bytes),
               "second_half_loss": float(losses[half:].mean())}
    windows = {"doc": [doc_index] * len(nll), "start": [i * block for i in range(len(nll))],
               "nll": [round(float(x), 4) for x in nll], "bytes": [int(x) for x in nb]}
    self._append("perplexity", key, metrics, method=label, document=spec, length=length, served_by=forward.label,
                 forward_length=forward.length, windows=windows)

  # -- retrieval

  def retrieval(self) -> None:
    cfg = self.cfg
    haystack = None
    for label in cfg.retrieval_methods:
      model = generate.Model(self.model.config, self.model.params, self.encodings[label])
      for length in cfg.passkey_lengths:
        for depth in cfg.passkey_depths:
          for sample in range(cfg.passkey_samples):
            key = f"passkey/{label}/{length}/{depth}/{sample}"
            if key in self.done:
              continue
            prompt = measure.passkey_prompt(self.tokenizer, length, depth, seed=cfg.seed * 1000 + sample)
            self._retrieval_row("passkey", key, model, prompt, label, length, depth, sample)
      for length in cfg.needle_lengths:
        for depth in cfg.needle_depths:
          key = f"needle/{label}/{length}/{depth}"
          if key in self.done:
            continue
          if haystack is None:
            haystack = documents_lib.haystack_tokens(self.tokenizer, max(cfg.needle_lengths))
          prompt = measure.needle_prompt(self.tokenizer, haystack, length, depth)
          self._retrieval_row("needle", key, model, prompt, label, length, depth, 0)

  def _retrieval_row(self, kind, key, model, prompt, label, length, depth, sample):
    start = time.perf_counter()
    found, text = measure.retrieve(model, prompt, self.tokenizer, self.cfg.generation_cache)
    seconds = time.perf_counter() - start
    self.log(f"  {kind} {label} {length} tokens depth {depth}: {'found' if found else 'missed'} "
             f"({text.strip()[:40]!r}, {seconds:.0f} s)")
    self._append(kind, key, {"correct": int(found), "generated": text, "answer": prompt.answer,
                             "seconds": round(seconds, 1)},
                 method=label, length=length, depth=depth, achieved_depth=round(prompt.depth, 4), sample=sample)

  # -- analytic heatmaps with the model's mean q/k

  def heatmaps(self) -> None:
    cfg = self.cfg
    todo = [m.label for m in cfg.methods if f"heatmap/{m.label}" not in self.done]
    if not todo:
      return
    doc = documents_lib.load_document(cfg.documents[0], self.tokenizer, QK_PROBE_TOKENS)
    model_cfg = eval_model_config(self.model.config, QK_PROBE_TOKENS)
    q_mean, k_mean = mean_qk(model_cfg, self.model.params, self.encodings["rope"], doc.tokens[None])
    pairs = analytic.probe_pairs("trained", self.model.config.head_dim, q_mean=q_mean, k_mean=k_mean)
    positions = np.unique(np.linspace(0, cfg.heatmap_length - 1, HEATMAP_POINTS).round().astype(np.int64))
    for label in todo:
      grid = analytic.probe_score_grid(self.encodings[label], pairs, positions, seq_len=cfg.heatmap_length)
      self._append("heatmap", f"heatmap/{label}", {"grid": np.where(np.isnan(grid), None, grid.round(5)).tolist()},
                   method=label, positions=positions.tolist(), length=cfg.heatmap_length)


def run_study(cfg: config_lib.ZeroShotConfig, workdir: str, log=print) -> str:
  """Measures what ``results.jsonl`` lacks, then writes the figures and ``report.md``; returns its path."""
  from rope_lab.zero_shot import report  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  study = Study(cfg, workdir, log)
  log(f"model: {study.model.config.n_layers} layers, trained to {study.training_length} tokens; "
      f"{len(cfg.methods)} methods")
  log("perplexity and attention")
  study.perplexity()
  log("retrieval")
  study.retrieval()
  log("analytic heatmaps")
  study.heatmaps()
  log(f"measured in {(time.perf_counter() - start) / 60:.1f} min")
  return report.write_outputs(workdir)
