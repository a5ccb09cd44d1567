"""report.md from the study's rows and figures: setup, claim-by-claim table, numbers.

Only the markdown is written here. Every number in the report is read from results.jsonl;
the verdicts are the claims' rules (rope_lab.study.claims), stated in the table, and the
prose reading of the claims is generated from the same numbers. Number tables are bits per
byte on the evaluation split, as mean ± sample standard deviation over seeds (n in the
table). Rows are grouped by plan id and shown by label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rope_lab import results as results_lib
from rope_lab.evaluate.plans import PI_MATCHED, ROPE, TRAINED, scaled_id
from rope_lab.study.claims import METRIC, evaluate_claims
from rope_lab.study.figure_data import baseline_lines
from rope_lab.study.runs import run_key, run_label


# ----------------------------------------------------------------------------- tables


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
  lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in body]
  return "\n".join(lines)


def length_table(rows, criteria_by_label: Sequence[tuple[str, dict]], lengths: Sequence[int]) -> str:
  body = []
  for label, criteria in criteria_by_label:
    cells = []
    for length in lengths:
      summary = results_lib.summarize(results_lib.select(rows, length=length, **criteria), METRIC)
      cells.append("" if summary is None else summary.format(3))
    if any(cells):
      n_seeds = max((results_lib.summarize(results_lib.select(rows, **criteria), METRIC) or
                     results_lib.Summary(0, 0, 0, 0, 0, ())).n, 0)
      body.append([label, str(n_seeds)] + cells)
  return markdown_table(["encoding", "seeds"] + [str(n) for n in lengths], body)


def plans_in_order(rows) -> list[tuple[str, str]]:
  """(plan id, label) of every plan in the rows, in order of first appearance."""
  seen = {}
  for r in rows:
    seen.setdefault(r["plan_id"], r["plan"])
  return list(seen.items())


def claims_table(rows, cfg) -> str:
  """Every claim with its source, rule, measured value (95% interval, per seed) and verdict."""
  return markdown_table(["claim", "source", "rule (fixed before the run)", "measured [95% interval]", "verdict"],
                        [[c.claim, c.source, c.rule, c.measured, f"**{c.verdict}**"]
                         for c in evaluate_claims(rows, cfg)])


def claim_sentence(c) -> str:
  """One sentence on a claim, written from its numbers only (a test re-derives them from the rows)."""
  if c.value is None:
    return f"- {c.claim}: {c.verdict} ({c.measured})."
  unit = {"difference": "bits/byte", "relative": "relative change", "accuracy": "accuracy difference"}[c.statistic]
  side = "below" if c.below else "above"
  if c.interval is None:
    return (f"- {c.claim}: measured {c.value:+.3f} ({unit}); the rule needs the interval {side} "
            f"{c.threshold:+.3f}, and there is none, so {c.verdict}.")
  where = ("wholly " + side if c.verdict == "agrees" else "wholly on the other side of" if c.verdict == "disagrees"
           else "across")
  return (f"- {c.claim}: measured {c.value:+.3f} ({unit}), 95% interval [{c.interval.low:+.3f}, "
          f"{c.interval.high:+.3f}], {where} the threshold {c.threshold:+.3f}: {c.verdict}.")


def claims_prose(rows, cfg) -> str:
  """The reading of the claims, generated from the same numbers as the table."""
  return "\n".join(claim_sentence(c) for c in evaluate_claims(rows, cfg))


def retrieval_table(rows, kind: str = "passkey") -> str:
  """Accuracy (answer-token accuracy) by length for every (run, encoding), mean over depths and seeds."""
  cells = results_lib.select(rows, kind=kind)
  if not cells:
    return "_not measured_"
  lengths = sorted({r["length"] for r in cells})
  groups: dict[tuple, list] = {}
  for r in cells:
    groups.setdefault(run_key(r), []).append(r)
  body = []
  for group in groups.values():
    row = [run_label(group[0]), str(len({r["seed"] for r in group}))]
    for n in lengths:
      at = results_lib.select(group, length=n)
      if not at:
        row.append("")
        continue
      examples = sum(r["metrics"]["examples"] for r in at)
      acc = sum(r["metrics"]["accuracy"] * r["metrics"]["examples"] for r in at) / examples
      tok = sum(r["metrics"]["token_accuracy"] * r["metrics"]["examples"] for r in at) / examples
      row.append(f"{acc:.2f} ({tok:.2f}, n={examples})")
    body.append(row)
  return markdown_table(["model / encoding", "seeds"] + [str(n) for n in lengths], body)


def _tokenizer_words(data) -> str:
  if data.tokenizer == "byte":
    return "byte tokens"
  if data.tokenizer in ("bpe", "unigram"):
    return f"a {data.vocab_size:,}-piece SentencePiece {data.tokenizer.upper() if data.tokenizer == 'bpe' else 'unigram'} vocabulary of the training split"
  return f"tokenizer `{data.tokenizer}`"


def _mix_words(cfg) -> str:
  if not cfg.retrieval_mix:
    return ""
  packed = (f", each packed with examples of {cfg.retrieval_min_length} to {cfg.train_length} tokens"
            if cfg.retrieval_min_length else "")
  runs = "every training run, fine-tunes included," if cfg.finetune_retrieval else "every pretraining run"
  return f"; {100 * cfg.retrieval_mix:g}% of the rows of {runs} are short retrieval rows{packed}"


def documents_sentence(ppl_rows, cfg) -> str:
  """Which documents the perplexity rows scored, and the rule that chose them."""
  scored = sorted({tuple(r["docs"]) for r in ppl_rows if r.get("docs")})
  rule = (f"Documents: the first {cfg.eval_docs} of the split by id among those with at least "
          f"{cfg.eval_doc_tokens} tokens (the longest window is {cfg.train_length * max(cfg.eval_scales)}); "
          "shorter ones are skipped, so no length is scored on fewer documents than another")
  if not scored:
    return rule + " (the rows do not name them)."
  names = "; ".join(", ".join(f"`{d}`" for d in docs) for docs in scored)
  return rule + f": {names}."


def variants_section(ppl, cfg, lengths) -> list[str]:
  """The declared pretraining variants as trained, beside the RoPE base models of the same seeds."""
  variants = results_lib.select(ppl, run_kind="variant")
  if not variants:
    return []
  seeds = sorted({r["seed"] for r in variants})
  base = [r for r in results_lib.select(ppl, run_kind="base", plan_id="rope") if r["seed"] in seeds]
  criteria = [(f"{run.label} (pretrained): `{run.spec}`", dict(run_kind="variant", method=run.label, plan_id=TRAINED))
              for run in cfg.pretrain_variants]
  return ["", "## Pretraining variants (each evaluated as trained)", "",
          length_table(base + variants, [("RoPE base model", dict(run_kind="base"))] + criteria, lengths)]


def longrope_section(rows, ppl, cfg, lengths) -> list[str]:
  """The LongRoPE search (its row) and its factors against PI, NTK and YaRN set for the same s."""
  s = cfg.static_scale
  searches = results_lib.select(rows, kind="longrope_search")
  head = ["", f"## LongRoPE: searched factors against PI, NTK, YaRN (s = {s:g})", ""]
  if not searches:
    return head + ["_not measured (longrope_search off, or rows written before the search was a phase)_"]
  found = searches[-1]
  budget = found.get("budget", {})
  metrics = found["metrics"]
  text = (f"Factors searched (Ding et al. 2024's evolution, seeded from PI, NTK and YaRN) on `{found['run']}` for "
          f"{found['length']} tokens ({found['scale']:g}x), scored on the first {found.get('docs_per_candidate', '?')} "
          f"`{found['split']}` documents only: population {budget.get('population')}, {metrics['generations']} "
          f"generations ({budget.get('mutations')} mutations + {budget.get('crossovers')} crossovers each, top "
          f"{budget.get('top_k')} kept; the paper's budget is 64, 40, 16 + 16, 32), {metrics['candidates']} "
          f"candidates scored in {metrics['seconds']:.0f} s; best validation perplexity {metrics['perplexity']:.3f} "
          f"(n_hat {found.get('n_hat', 0)}). The same factors are applied zero-shot to every seed's base model: "
          "LongRoPE searches per model, so this cheaper protocol may understate it on the other seeds. "
          f"Bits per byte on `{cfg.eval_split}` (mean ± std over seeds; the claim above gives the paired interval):")
  plans = [(label, dict(run_kind="base", plan_id=plan_id)) for plan_id, label in (
      (scaled_id("longrope", s), f"LongRoPE s={s:g}"), (scaled_id("yarn", s), f"YaRN s={s:g}"),
      (scaled_id("ntk", s), f"NTK s={s:g}"), (scaled_id("pi", s), f"PI s={s:g}"), (ROPE, "RoPE"))]
  return head + [text, "", length_table(ppl, plans, lengths)]


def _timing(rows) -> str:
  timing = results_lib.select(rows, kind="timing")
  if not timing:
    return "_not recorded_"
  phases = timing[-1]["metrics"]
  total = sum(phases.values())
  return ", ".join(f"{k} {v / 60:.1f} min" for k, v in phases.items()) + f"; total {total / 60:.1f} min"


def write_report(rows, figures, cfg, path: str) -> str:
  """Writes report.md next to the figures it links (relative paths) and returns its path."""
  report_dir = os.path.dirname(os.path.abspath(path))
  rel = lambda f: os.path.relpath(f.path, report_dir)
  base_cfg = cfg.base
  ppl = results_lib.select(rows, kind="perplexity", split=cfg.eval_split)
  lengths = sorted({r["length"] for r in ppl})
  commits = sorted({r["commit"] for r in rows})
  train_rows = results_lib.select(rows, kind="train")
  choice = results_lib.select(rows, kind="choice")
  s = cfg.static_scale
  parts = [
      "# Context-extension study",
      "",
      f"Tiny Llama-style model ({base_cfg.model.n_layers} layers, width {base_cfg.model.d_model}, "
      f"{base_cfg.model.n_heads} heads; {_tokenizer_words(base_cfg.data)}) trained on `{base_cfg.data.dataset}` at "
      f"{cfg.train_length} tokens for {base_cfg.train.steps} steps (batch {base_cfg.train.global_batch_size}"
      f"{_mix_words(cfg)}), seeds {list(cfg.seeds)}. "
      f"Perplexity by sliding windows (stride {cfg.stride_fraction:g} x window; each window scores only its new "
      f"tokens) on the first {cfg.eval_doc_tokens} tokens of {cfg.eval_docs} `{cfg.eval_split}` documents, the "
      f"same tokens at every window length. {documents_sentence(ppl, cfg)} "
      f"Numbers: bits per byte, mean ± std over seeds. Static methods are "
      f"set for s = {s:g}; the dynamic ones and `PI s=L/L0` follow the window length. Fine-tunes: "
      f"{cfg.finetune_steps} steps ({100 * cfg.finetune_steps / base_cfg.train.steps:.0f}% of pretraining) at "
      f"{cfg.finetune_scale}x with the same tokens per step.",
      "",
      f"Code: {', '.join(commits)}. Run time: {_timing(rows)}.",
  ]
  if choice:
    metrics = choice[-1]["metrics"]
    parts += ["", f"Chosen on `{choice[-1]['split']}` (never on `{cfg.eval_split}`): fine-tuning learning rate "
              f"{metrics['chosen']:g} ({', '.join(f'{k}: {v:.3f} nats' for k, v in metrics.items() if k != 'chosen')})."]
  lines = baseline_lines(rows, cfg)
  parts += ["", "## Baselines on the same test text", "",
            "; ".join(f"{label}: {value:.3f} bits/byte" for label, value in lines) + "."
            if lines else "_not measured (rows written before the baselines)_"]
  parts += ["", "## Claims", "", claims_table(rows, cfg), "", "## Reading the claims", "",
            "Written by code from the numbers above: a verdict is agrees or disagrees only when the paired "
            "block-bootstrap 95% interval (blocks of 8 consecutive windows, all seeds' windows pooled) clears the "
            "rule's threshold.", "", claims_prose(rows, cfg)]
  parts += ["", "## Figures", ""]
  for figure in figures:
    parts += [f"![{figure.name}]({rel(figure)})", "", figure.caption, ""]

  base_plans = [(label, dict(run_kind="base", plan_id=p))
                for p, label in plans_in_order(results_lib.select(ppl, run_kind="base"))]
  parts += ["## Zero-shot perplexity (bits per byte) by window length", "", length_table(ppl, base_plans, lengths)]
  parts += longrope_section(rows, ppl, cfg, lengths)
  ft_labels = [(f"{run.label} fine-tuned at {cfg.finetune_scale}x", dict(
      run_kind="finetune", method=run.label, plan_id=TRAINED, train_scale=cfg.finetune_scale)) for run in cfg.finetunes]
  ft_labels += [(f"{cfg.grid_finetune} fine-tuned at {t}x, factor L/L0", dict(
      run_kind="finetune", method=cfg.grid_finetune, plan_id=PI_MATCHED, train_scale=t))
      for t in sorted(set(cfg.grid_train_scales) | {cfg.finetune_scale})]
  parts += ["", "## Fine-tuned models", "", length_table(ppl, ft_labels, lengths)]
  ape = [(label, dict(run_kind="ape", plan_id=p)) for p, label in plans_in_order(results_lib.select(ppl, run_kind="ape"))]
  if ape:
    parts += ["", f"## Absolute positions (LongEmbed extensions of a {cfg.ape_model.method.name}-APE model)", "",
              length_table(ppl, ape, lengths)]
  parts += variants_section(ppl, cfg, lengths)
  parts += ["", "## Retrieval", "",
            "Exact greedy match of the answer (in brackets: fraction of answer tokens that are the argmax given "
            "the true prefix, and the number of examples), mean over key depths and seeds.", "",
            "Passkey:", "", retrieval_table(rows, "passkey"), "",
            f"Passkey by depth at {cfg.middle_length} tokens (lost in the middle), all depths pooled:", "",
            retrieval_table(rows, "middle"), "", "Key-value lines:", "", retrieval_table(rows, "lines")]
  if results_lib.select(rows, kind="short_passkey") or results_lib.select(rows, kind="mqar"):
    parts += ["", f"Short tasks taught in pretraining ({100 * cfg.retrieval_mix:g}% of the base models' rows"
              f"{', and of the fine-tunes' if cfg.finetune_retrieval else ''}; "
              f"{len(cfg.short_retrieval_depths) * cfg.short_retrieval_samples} examples per seed and cell):", "",
              "Short passkey:", "", retrieval_table(rows, "short_passkey"), "",
              "Multi-query associative recall (the last query's value):", "", retrieval_table(rows, "mqar")]
  attention = results_lib.select(rows, kind="attention")
  if attention:
    body = []
    for plan_id, label in plans_in_order(attention):
      for scale in sorted({r["scale"] for r in attention}):
        cell = results_lib.select(attention, plan_id=plan_id, scale=scale)
        if cell:
          body.append([label, f"{scale}x"] + [f"{r['metrics']['mass_beyond_train_length']:.3f}"
                                             for r in sorted(cell, key=lambda r: r["layer"])])
    layers = max(r["layer"] for r in attention) + 1
    parts += ["", "## Attention mass beyond the training length", "",
              "Fraction of attention at distances >= the training length (mean over queries, heads, documents):", "",
              markdown_table(["encoding", "window"] + [f"layer {i}" for i in range(layers)], body)]
  if train_rows:
    body = [[r["run"], f"{r['metrics']['steps']}", f"{r['metrics']['train_loss']:.3f}",
             "" if r["metrics"].get("eval_loss") is None else f"{r['metrics']['eval_loss']:.3f}",
             f"{r['metrics']['seconds']:.0f}"] for r in train_rows]
    parts += ["", "## Training runs", "", markdown_table(["run", "steps", "last train loss", "validation loss", "seconds"], body)]
  parts += ["", f"Raw rows: `results.jsonl` ({len(rows)} rows)."]
  with open(path, "w") as f:
    f.write("\n".join(parts) + "\n")
  return path
