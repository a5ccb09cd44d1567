"""Figures and ``report.md`` of the real-model study, from ``results.jsonl`` alone."""

from __future__ import annotations

import collections
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rope_lab import results as results_lib  # noqa: E402
from rope_lab.study import statistics  # noqa: E402
from rope_lab.study.report_text import markdown_table  # noqa: E402
from rope_lab.zero_shot import claims as claims_lib  # noqa: E402
from rope_lab.zero_shot import config as config_lib  # noqa: E402

DPI = 110
REPORT_FILE = "report.md"
POSITION_BUCKET = 1024


def _load(workdir: str):
  with open(os.path.join(workdir, config_lib.CONFIG_FILE), encoding="utf-8") as f:
    raw = json.load(f)
  raw["methods"] = tuple(config_lib.Method(m["label"], m["name"], tuple(tuple(p) for p in m["params"]))
                         for m in raw["methods"])
  cfg = config_lib.ZeroShotConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
  rows = results_lib.read_rows(os.path.join(workdir, "results.jsonl"))
  return cfg, rows


def _labels(cfg):
  return [m.label for m in cfg.methods]


def _colors(n):
  cmap = plt.get_cmap("tab20")
  return [cmap(i % 20) for i in range(n)]


def _bpb_interval(rows, method, length, cfg):
  parts = [r for r in results_lib.select(rows, kind="perplexity", method=method, length=length)]
  if len(parts) != len(cfg.documents):
    return None
  units = statistics.aligned_units(*parts) if len(parts) == 1 else statistics.Units(
      nll=np.concatenate([np.asarray(r["windows"]["nll"], np.float64)[None] for r in parts], axis=1),
      bytes=np.concatenate([np.asarray(r["windows"]["bytes"], np.float64)[None] for r in parts], axis=1))
  return claims_lib.bootstrap(units, "bpb", cfg)


def perplexity_figure(rows, cfg, training_length, figures_dir) -> str:
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for label, color in zip(_labels(cfg), _colors(len(cfg.methods))):
    found = [(n, _bpb_interval(rows, label, n, cfg)) for n in cfg.lengths]
    found = [(n, i) for n, i in found if i is not None]
    if not found:
      continue
    x = [n for n, _ in found]
    y = np.asarray([i.estimate for _, i in found])
    err = np.asarray([[i.estimate - i.low for _, i in found], [i.high - i.estimate for _, i in found]])
    ax.errorbar(x, y, yerr=err, label=label, color=color, marker="o", ms=3, capsize=2,
                lw=2.2 if label == "rope" else 1.2)
  ax.axvline(training_length, color="grey", ls=":", lw=1)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("tokens from the document start (window = L)")
  ax.set_ylabel("bits per byte, first L tokens")
  ax.set_title("SmolLM2-135M zero-shot: perplexity vs length (95% block-bootstrap intervals)")
  ax.legend(fontsize=7, ncol=2)
  return _save(fig, figures_dir, "real_perplexity.png")


def position_figure(rows, cfg, training_length, figures_dir) -> str:
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  top = cfg.max_length
  for label, color in zip(_labels(cfg), _colors(len(cfg.methods))):
    parts = results_lib.select(rows, kind="perplexity", method=label, length=top)
    if not parts:
      continue
    nll = collections.defaultdict(float)
    nbytes = collections.defaultdict(float)
    for r in parts:
      for s, x, b in zip(r["windows"]["start"], r["windows"]["nll"], r["windows"]["bytes"]):
        nll[s // POSITION_BUCKET] += x
        nbytes[s // POSITION_BUCKET] += b
    buckets = sorted(nll)
    ax.plot([(b + 0.5) * POSITION_BUCKET for b in buckets], [nll[b] / (np.log(2) * nbytes[b]) for b in buckets],
            label=label, color=color, lw=2.2 if label == "rope" else 1.2)
  ax.axvline(training_length, color="grey", ls=":", lw=1)
  ax.set_xlabel(f"position in the window ({POSITION_BUCKET}-token buckets; one {top}-token window per document)")
  ax.set_ylabel("bits per byte")
  ax.set_title("Loss by position: where each method breaks")
  ax.legend(fontsize=7, ncol=2)
  return _save(fig, figures_dir, "real_loss_by_position.png")


def attention_figure(rows, cfg, training_length, figures_dir) -> str | None:
  found = results_lib.select(rows, kind="attention")
  if not found:
    return None
  lengths = sorted({r["length"] for r in found})
  fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), squeeze=False)
  for ax, length in zip(axes[0], lengths):
    for label, color in zip(_labels(cfg), _colors(len(cfg.methods))):
      row = results_lib.select(found, method=label, length=length)
      if not row:
        continue
      mass = np.asarray(row[0]["metrics"]["mass"]).mean(axis=0)  # over layers
      edges = row[0]["edges"]
      ax.plot(edges[1:len(mass) + 1], mass, label=label, color=color, marker=".", lw=2.2 if label == "rope" else 1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("relative distance (upper bin edge)")
    ax.set_ylabel("attention mass (mean over layers, heads, last queries)")
    ax.set_title(f"query at {length} ({length / training_length:g}x)")
  axes[0][0].legend(fontsize=7, ncol=2)
  return _save(fig, figures_dir, "real_attention_by_distance.png")


def retrieval_figure(rows, cfg, figures_dir) -> str | None:
  kinds = [k for k in ("passkey", "needle") if results_lib.select(rows, kind=k)]
  if not kinds:
    return None
  fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 3.8), squeeze=False, layout="constrained")
  for ax, kind in zip(axes[0], kinds):
    found = results_lib.select(rows, kind=kind)
    methods = [m for m in cfg.retrieval_methods if results_lib.select(found, method=m)]
    lengths = sorted({r["length"] for r in found})
    grid = np.full((len(methods), len(lengths)), np.nan)
    for i, m in enumerate(methods):
      for j, n in enumerate(lengths):
        cell = results_lib.select(found, method=m, length=n)
        if cell:
          grid[i, j] = np.mean([r["metrics"]["correct"] for r in cell])
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(methods)), methods)
    for i in range(len(methods)):
      for j in range(len(lengths)):
        if not np.isnan(grid[i, j]):
          ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w" if grid[i, j] < 0.6 else "k")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_title(f"{kind}: accuracy over depths (greedy)")
  fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
  return _save(fig, figures_dir, "real_retrieval.png")


def heatmap_figure(rows, cfg, figures_dir) -> str | None:
  found = results_lib.select(rows, kind="heatmap")
  if not found:
    return None
  cols = min(5, len(found))
  nrows = -(-len(found) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.6 * nrows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, row in zip(axes.flat, found):
    grid = np.asarray([[np.nan if v is None else v for v in line] for line in row["metrics"]["grid"]], np.float64)
    top = row["positions"][-1]
    ax.imshow(grid, cmap="magma", origin="upper", extent=(0, top, top, 0))
    ax.set_title(row["method"], fontsize=8)
    ax.axis("on")
    ax.tick_params(labelsize=5)
  fig.suptitle("Analytic q.k score (query row, key column) with SmolLM2's mean q/k, all layers and heads", fontsize=9)
  return _save(fig, figures_dir, "real_similarity_heatmaps.png")


def _save(fig, figures_dir: str, name: str) -> str:
  os.makedirs(figures_dir, exist_ok=True)
  path = os.path.join(figures_dir, name)
  if fig.get_layout_engine() is None:
    fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def _perplexity_table(rows, cfg) -> str:
  body = []
  for m in cfg.methods:
    cells = []
    for n in cfg.lengths:
      found = _bpb_interval(rows, m.label, n, cfg)
      cells.append("-" if found is None else found.format(3))
    params = ", ".join(f"{k}={v}" for k, v in m.params) or "(its defaults)"
    body.append([f"{m.label}", f"`{m.name}` {params}", *cells])
  note = ("Every row also takes the model's rope base (1e5) and training length (8192) wherever the encoding has "
          "those parameters and the row does not set them.\n\n")
  return note + markdown_table(["method", "encoding", *[str(n) for n in cfg.lengths]], body)


def _retrieval_table(rows, cfg, kind) -> str:
  found = results_lib.select(rows, kind=kind)
  if not found:
    return "(not measured)"
  lengths = sorted({r["length"] for r in found})
  depths = sorted({r["depth"] for r in found})
  body = []
  for m in cfg.retrieval_methods:
    cells = []
    for n in lengths:
      per_depth = []
      for d in depths:
        cell = results_lib.select(found, method=m, length=n, depth=d)
        per_depth.append("".join("✓" if r["metrics"]["correct"] else "✗" for r in cell) or "-")
      cells.append(" ".join(per_depth))
    body.append([m, *cells])
  return (f"Each cell: one mark per prompt, depths {', '.join(str(d) for d in depths)} left to right.\n\n"
          + markdown_table(["method", *[str(n) for n in lengths]], body))


def write_outputs(workdir: str) -> str:
  cfg, rows = _load(workdir)
  training = rows and next((r.get("training_length") for r in rows if r.get("training_length")), None)
  training_length = int(training or 8192)
  figures_dir = os.path.join(workdir, "figures")
  figures = [perplexity_figure(rows, cfg, training_length, figures_dir),
             position_figure(rows, cfg, training_length, figures_dir),
             attention_figure(rows, cfg, training_length, figures_dir),
             retrieval_figure(rows, cfg, figures_dir), heatmap_figure(rows, cfg, figures_dir)]
  claims = claims_lib.all_claims(rows, cfg, training_length)
  commits = sorted({r["commit"] for r in rows})
  seconds = sum(r["metrics"].get("seconds", 0) for r in rows if r["kind"] in ("passkey", "needle"))
  lines = [
      "# Zero-shot context extension on a real pretrained model (SmolLM2-135M)", "",
      f"Model: `{cfg.model}` (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32; 30 layers, RoPE base 1e5, "
      f"trained to {training_length} tokens). Documents: {', '.join(cfg.documents)}; one window of "
      f"{cfg.max_length} tokens from each document's start, the loss of every token stored in {cfg.block}-token "
      "blocks; the length-L figures read the first L tokens (a forward pass of its own wherever an encoding acts "
      "differently at L, as Dynamic NTK/YaRN do). Code: " + ", ".join(f"`{c}`" for c in commits) + ".", "",
      "Every interval is a 95% moving-block bootstrap over the blocks (paired wherever two methods are compared: "
      "the same tokens on both sides). Retrieval: greedy generation with the KV cache (`rope_lab.model.generate`, cache "
      f"mode `{cfg.generation_cache}`), passkey correct when the key's digits appear in the continuation, needle "
      "correct when 'Dolores Park' does (Giraffe's presence accuracy).", "",
      "## Claims (rules fixed before the run)", "",
      markdown_table(["claim", "source", "rule", "measured", "verdict"],
             [[c.claim, c.source, c.rule, c.measured, f"**{c.verdict}**"] for c in claims]), "",
      "## Perplexity: bits per byte of the first L tokens", "", _perplexity_table(rows, cfg), "",
      "## Passkey retrieval", "", _retrieval_table(rows, cfg, "passkey"), "",
      "## Needle in a haystack (Paul Graham essays)", "", _retrieval_table(rows, cfg, "needle"), "",
      "## Figures", ""]
  for path in figures:
    if path:
      lines += [f"![{os.path.basename(path)}](figures/{os.path.basename(path)})", ""]
  lines += [f"Generation time over all retrieval prompts: {seconds / 60:.1f} min.", ""]
  path = os.path.join(workdir, REPORT_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path
