"""Sizing the study's base model on this CPU: does a short run use its context?

For each candidate (tokenizer, width, depth, training length, steps) it trains the study's
base experiment (configs/study.py's, with the candidate's fields), then measures on held-out
validation documents, the same tokens for every column:

  steps/s       training steps per second, compilation included (and the wall time)
  full          bits/byte with windows of the training length (stride half a window)
  quarter       bits/byte of the same model with windows of a quarter of it
  n-gram        an order-5 byte Kneser-Ney model fitted on the training split
  unigram       the training split's byte entropy

  short_passkey, mqar   (with a retrieval mix) greedy exact-match accuracy of the taught short
                tasks at the training length, 50 examples each (5 depths x 10); the short
                passkey also at a quarter and a half of it (short_passkey_q, short_passkey_h)

  python -m benchmarks.study_sizing --candidates=byte:128:4:128:300,bpe1024:128:4:256:300 \
      --out=/tmp/rope_lab/sizing

A candidate is tokenizer:d_model:n_layers:seq_len:steps[:batch[:mix[:lr[:shortest]]]], tokenizer
'byte' or 'bpe<vocab>'; batch is rows per step (default the study's), mix the fraction of training
rows replaced by short retrieval rows (short passkey and MQAR, loss on the answers; default 0), lr
the peak learning rate (default the study's), shortest: pack each retrieval row with examples of
shortest..seq_len tokens (default: one example of the row's length).
Results: a markdown table on stdout and <out>/sizing.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time


def candidate_experiment(spec: str):
  from configs import study as study_config  # pylint: disable=g-import-not-at-top
  from rope_lab import config as config_lib  # pylint: disable=g-import-not-at-top
  from rope_lab.data import get_tokenizer  # pylint: disable=g-import-not-at-top
  tokenizer, d_model, n_layers, seq_len, steps, *optional = spec.split(":")
  batch, _, lr = (optional + ["", "", ""])[:3]  # the mix and shortest fields: measure() sets them
  base = study_config.base_experiment(int(steps))
  base.update(seq_len=int(seq_len), log_every=50)
  if batch:
    base.global_batch_size = int(batch)
  if lr:
    base.learning_rate = float(lr)
  if tokenizer != "byte":
    base.data.tokenizer, base.data.vocab_size = "bpe", int(tokenizer.removeprefix("bpe"))
  base.model.d_model, base.model.n_layers = int(d_model), int(n_layers)
  base.model.mlp_dim = 4 * int(d_model)
  exp = config_lib.experiment_from_config_dict(base)
  vocab = get_tokenizer(exp.data).vocab_size
  base.model.vocab_size = vocab
  return config_lib.experiment_from_config_dict(base)


def measure(spec: str, out: str, docs: int, doc_tokens: int, ngram_bytes: int) -> dict:
  from rope_lab.training import loop as train_lib  # pylint: disable=g-import-not-at-top
  from rope_lab.data import get_tokenizer, long_documents  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import ngram, perplexity  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate.runs import load_run  # pylint: disable=g-import-not-at-top
  from rope_lab.study.measurements import split_text  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import retrieval  # pylint: disable=g-import-not-at-top
  from rope_lab.data.synthetic import task_grid  # pylint: disable=g-import-not-at-top
  exp = candidate_experiment(spec)
  fields = spec.split(":")
  mix = float(fields[6]) if len(fields) > 6 and fields[6] else 0.0
  shortest = int(fields[8]) if len(fields) > 8 and fields[8] else 0
  workdir = os.path.join(out, spec.replace(":", "_"))
  tokenizer = get_tokenizer(exp.data)
  if mix:  # the short retrieval rows, as the study's runs get them (DataConfig.retrieval_mix)
    exp = dataclasses.replace(exp, data=dataclasses.replace(
        exp.data, retrieval_mix=mix, retrieval_min_length=shortest,
        retrieval_max_length=exp.train.seq_len + 1 if shortest else 0))
  start = time.perf_counter()
  train_lib.run(exp, workdir)
  seconds = time.perf_counter() - start
  run = load_run(workdir)
  length = exp.train.seq_len
  documents = long_documents(exp.data, "validation", min_tokens=doc_tokens, max_docs=docs,
                             max_tokens=doc_tokens, tokenizer=tokenizer)
  row = {"candidate": spec, "steps": exp.train.steps, "train_seconds": round(seconds, 1),
         "steps_per_second": round(exp.train.steps / seconds, 2),
         "tokens_per_step": exp.train.global_batch_size * length, "docs": [d.doc_id for d in documents]}
  for name, window in (("full", length), ("quarter", length // 4)):
    result = perplexity.perplexity_at_length(run.model, run.params, exp.encoding, documents, window,
                                             stride=perplexity.stride_for(window, 0.5), tokenizer=tokenizer)
    row[name] = round(result.bits_per_byte, 4)
  train_text = split_text(exp.data, "train", tokenizer, ngram_bytes)
  model = ngram.KneserNey(order=5).fit(train_text)
  texts = [tokenizer.decode(d.tokens).encode("utf-8") for d in documents]
  row["ngram"] = round(sum(model.bits(t) for t in texts) / sum(len(t) for t in texts), 4)
  row["unigram"] = round(ngram.unigram_entropy(train_text), 4)
  if mix:
    for task in ("short_passkey", "mqar"):
      examples = task_grid(task, tokenizer, [length], (0.0, 0.25, 0.5, 0.75, 1.0), seed=1, samples=10)
      scores = retrieval.score_examples(run.model, run.params, exp.encoding, examples)
      row[task] = round(retrieval.summarize_scores(scores)["accuracy"], 3)
    for suffix, fraction in (("q", 4), ("h", 2)):
      examples = task_grid("short_passkey", tokenizer, [length // fraction], (0.0, 0.25, 0.5, 0.75, 1.0),
                           seed=1, samples=10)
      scores = retrieval.score_examples(run.model, run.params, exp.encoding, examples)
      row[f"short_passkey_{suffix}"] = round(retrieval.summarize_scores(scores)["accuracy"], 3)
  row["load_average"] = os.getloadavg()[0]
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--candidates", required=True, help="comma-separated tokenizer:d_model:n_layers:seq_len:steps")
  parser.add_argument("--out", default="/tmp/rope_lab/sizing")
  parser.add_argument("--docs", type=int, default=4)
  parser.add_argument("--doc_tokens", type=int, default=4096)
  parser.add_argument("--ngram_bytes", type=int, default=2_000_000)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for spec in args.candidates.split(","):
    rows.append(measure(spec, args.out, args.docs, args.doc_tokens, args.ngram_bytes))
    with open(os.path.join(args.out, "sizing.json"), "w") as f:
      json.dump(rows, f, indent=1)
    print(json.dumps(rows[-1]), flush=True)
  print("| candidate | steps/s | train s | full | quarter | n-gram | unigram | short passkey L/4, L/2, L | mqar | load |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['candidate']} | {r['steps_per_second']} | {r['train_seconds']} | {r['full']} | {r['quarter']} | "
          f"{r['ngram']} | {r['unigram']} | {r.get('short_passkey_q', '-')}, {r.get('short_passkey_h', '-')}, {r.get('short_passkey', '-')} | {r.get('mqar', '-')} | "
          f"{r['load_average']:.1f} |")


if __name__ == "__main__":
  main()
