"""Study figures: drawing only; the numbers they show come from figure_data.py.

Every curve over seeds is drawn as the mean with a band from the lowest to the highest
seed, so the spread is visible; the number of seeds is in the legend. Nothing here
computes a model: perplexity, retrieval and attention numbers come from the rows, and the
analytic similarity maps from the encodings themselves. Rows are picked by plan id.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rope_lab import results as results_lib  # noqa: E402
from rope_lab.evaluate import analytic, plans as plans_lib  # noqa: E402
from rope_lab.evaluate.plans import DYNAMIC_NTK, DYNAMIC_YARN, PI_MATCHED, ROPE, TRAINED, scaled_id  # noqa: E402
from rope_lab.study import figure_data as data  # noqa: E402
from rope_lab.study.measurements import ATTENTION_PANEL_TOKENS, attention_file  # noqa: E402
from rope_lab.study.runs import run_label  # noqa: E402

DPI = 110


@dataclasses.dataclass(frozen=True)
class Figure:
  name: str
  path: str
  caption: str


def _draw_curves(ax, groups: list[tuple[str, list]], metric: str, train_length: int, *, ylim=None):
  colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
  for i, (label, rows) in enumerate(groups):
    if not rows:
      continue
    xs, mean, low, high, n = data.curve(rows, metric)
    style = "--" if i >= 10 else "-"
    ax.plot(xs, mean, style, marker="o", ms=3, color=colors(i % 20), label=f"{label} (n={n})")
    if n > 1:
      ax.fill_between(xs, low, high, color=colors(i % 20), alpha=0.18, lw=0)
  ax.set_xscale("log", base=2)
  ax.axvline(train_length, color="k", ls=":", lw=1)
  ax.set_xlabel("evaluation window (tokens)")
  ax.set_ylabel(metric.replace("_", " "))
  if ylim:
    ax.set_ylim(*ylim)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def _draw_baselines(ax, rows, cfg, ylim):
  """The reference lines (truncated context, n-gram, unigram entropy), with the view widened to show them."""
  lines = data.baseline_lines(rows, cfg)
  for (label, value), style in zip(lines, ("-.", "--", ":")):
    ax.axhline(value, color="dimgrey", ls=style, lw=1.2, label=f"{label}: {value:.2f}")
  if lines:
    values = [v for _, v in lines] + (list(ylim) if ylim else [])
    margin = 0.04 * (max(values) - min(values) or 1.0)
    ax.set_ylim(min(values) - margin, max(values) + margin)
    ax.legend(fontsize=7)


def _save(fig, figures_dir: str, name: str, caption: str) -> Figure:
  os.makedirs(figures_dir, exist_ok=True)
  path = os.path.join(figures_dir, name)
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return Figure(name, path, caption)


def _ppl(rows, **criteria):
  return results_lib.select(rows, kind="perplexity", **criteria)


def perplexity_zero_shot(rows, cfg, figures_dir) -> Figure:
  base = [r for r in _ppl(rows, run_kind="base", split=cfg.eval_split) if r["length"] >= cfg.train_length]
  groups = data.by_plan(base)
  fig, ax = plt.subplots(figsize=(8, 5))
  ylim = data.value_range(groups, "bits_per_byte")
  _draw_curves(ax, groups, "bits_per_byte", cfg.train_length, ylim=ylim)
  _draw_baselines(ax, rows, cfg, ylim)
  ax.axvline(cfg.train_length * cfg.static_scale, color="grey", ls="--", lw=0.8)
  ax.set_title(f"Zero-shot extension of a RoPE model trained at {cfg.train_length} tokens "
               f"({cfg.eval_split} documents)", fontsize=10)
  fig.tight_layout()
  return _save(fig, figures_dir, "perplexity_zero_shot.png",
               "Bits per byte vs evaluation window, RoPE base models under each encoding applied zero-shot "
               f"(mean over seeds, band: min to max). Dotted: training length; dashed: the static methods' "
               f"target s={cfg.static_scale:g}. Horizontal: the base model with its window cut to "
               f"{cfg.truncation_scale:g} of the training length, the byte n-gram and the unigram entropy.")


def perplexity_finetuned(rows, cfg, figures_dir) -> Figure:
  split = cfg.eval_split
  base = [r for r in _ppl(rows, run_kind="base", split=split) if r["length"] >= cfg.train_length]
  groups = [(data.plan_label(base, plan_id), _ppl(base, plan_id=plan_id))
            for plan_id in (ROPE, scaled_id("pi", cfg.static_scale), scaled_id("yarn", cfg.static_scale), DYNAMIC_YARN)]
  for run in cfg.finetunes:  # labels from the declarations
    ft = [r for r in _ppl(rows, run_kind="finetune", method=run.label, plan_id=TRAINED, split=split)
          if r["run"].startswith("ft_") and r["train_scale"] == cfg.finetune_scale]
    groups.append((f"{run.label} fine-tuned s={cfg.finetune_scale}", ft))
  fig, ax = plt.subplots(figsize=(8, 5))
  ylim = data.value_range(groups, "bits_per_byte")
  _draw_curves(ax, groups, "bits_per_byte", cfg.train_length, ylim=ylim)
  _draw_baselines(ax, rows, cfg, ylim)
  ax.axvline(cfg.train_length * cfg.finetune_scale, color="grey", ls="--", lw=0.8)
  ax.set_title(f"{cfg.finetune_steps}-step fine-tunes at {cfg.finetune_scale}x vs zero-shot", fontsize=10)
  fig.tight_layout()
  return _save(fig, figures_dir, "perplexity_finetuned.png",
               f"The declared fine-tunes ({cfg.finetune_steps} steps at {cfg.train_length * cfg.finetune_scale} "
               "tokens) against the same encodings zero-shot and plain RoPE (mean over seeds, band: min to max), "
               "with the same reference lines.")


def giraffe_grid(rows, cfg, figures_dir) -> Figure | None:
  train_scales, eval_scales, mean, _ = data.grid_values(rows, cfg)
  if len(train_scales) < 2:
    return None
  fig, ax = plt.subplots(figsize=(1.1 * len(eval_scales) + 2, 0.7 * len(train_scales) + 1.8))
  image = ax.imshow(mean, cmap="viridis_r", aspect="auto")
  for i in range(len(train_scales)):
    for j in range(len(eval_scales)):
      if np.isfinite(mean[i, j]):
        ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=8,
                color="w" if mean[i, j] > np.nanmean(mean) else "k")
  ax.set_xticks(range(len(eval_scales)), [f"{b}" for b in eval_scales])
  ax.set_yticks(range(len(train_scales)), ["base (zero-shot)" if a == 1 else f"{a}" for a in train_scales])
  ax.set_xlabel("evaluation scale b (window = b x training length, PI factor b)")
  ax.set_ylabel("fine-tuning scale a")
  fig.colorbar(image, ax=ax, label="bits per byte")
  ax.set_title("Giraffe grid: fine-tune with PI at a, evaluate at b", fontsize=10)
  fig.tight_layout()
  return _save(fig, figures_dir, "giraffe_grid.png",
               "Bits per byte of PI models fine-tuned at scale a and evaluated with PI factor b at b x the "
               "training length (mean over the seeds that have the cell).")


def _analytic_encodings(cfg) -> list[plans_lib.EncodingPlan]:
  return plans_lib.rope_family_plans(cfg.train_length, base=cfg.base_frequency, scale=cfg.static_scale)


def _probes(arrays_dir, head_dim):
  probes = [("ones", analytic.probe_pairs("ones", head_dim)),
            ("gaussian", analytic.probe_pairs("gaussian", head_dim, seed=0))]
  qk_files = sorted(glob.glob(os.path.join(arrays_dir, "mean_qk_*.npz")))
  if qk_files:
    qk = np.load(qk_files[0])
    probes.append(("trained mean q/k", analytic.probe_pairs("trained", head_dim, q_mean=qk["q"],
                                                            k_mean=qk["k"])))
  return probes


# Token-resolution heatmaps show this many tokens: enough to see the slow pairs turn, while each
# cell stays one (query, key) pair so the fast pairs are not averaged away.
PANEL_TOKENS = 128


def similarity_figures(cfg, arrays_dir, figures_dir) -> list[Figure]:
  plans = _analytic_encodings(cfg)
  head_dim = cfg.base.model.head_dim
  probes = _probes(arrays_dir, head_dim)
  grid_len = int(cfg.train_length * cfg.static_scale)
  n_tokens = min(PANEL_TOKENS, grid_len)
  panels = [(plan.label, tuple(data.similarity_panel(plan, plans[0], pairs, n_tokens, grid_len, cfg.train_length)
                               for _, pairs in probes)) for plan in plans]
  kept, copies = data.distinct_panels(panels)
  # One symmetric scale for every panel, wide enough that no method's score is clipped.
  limit = max(1.0, max(float(np.nanmax(np.abs(grid))) for _, grids in panels for grid in grids))
  fig, axes = plt.subplots(len(probes), len(kept), figsize=(1.7 * len(kept) + 1.0, 1.7 * len(probes) + 0.7),
                           squeeze=False)
  for col, index in enumerate(kept):
    label, grids = panels[index]
    for row, (probe, _) in enumerate(probes):
      ax = axes[row, col]
      image = ax.imshow(grids[row], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest",
                        extent=(-0.5, n_tokens - 0.5, n_tokens - 0.5, -0.5))
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(label, fontsize=7)
      if col == 0:
        ax.set_ylabel(probe, fontsize=7)
  fig.suptitle(f"Analytic q.k score of query i (rows) vs key j (columns), first {n_tokens} tokens of a "
               f"{grid_len}-token window, one cell per token, / RoPE score at distance 0", fontsize=9)
  fig.tight_layout(rect=(0, 0, 0.93, 1))
  fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="score / RoPE score at distance 0")
  heat = _save(fig, figures_dir, "similarity_heatmaps.png",
               f"Analytic similarity heatmaps (Giraffe style) at token resolution: queries and keys 0-{n_tokens - 1} "
               f"of a {grid_len}-token window (length-dependent methods resolved at {grid_len} tokens), for the "
               f"probes {', '.join(probe for probe, _ in probes)} (all-ones q = k; one Gaussian q = k; the trained "
               "base model's mean q and k, averaged over layers and heads, when saved). Red positive, blue "
               "negative; blank: the causal future. Longer distances are in the score-by-distance figure."
               + data.coincidence_note(copies, f"at {grid_len} tokens for every probe"))

  max_distance = cfg.train_length * cfg.analytic_scale
  distances = np.arange(1, max_distance + 1)
  curves = [(plan.label, tuple(data.similarity_by_distance(plan, pairs, max_distance, cfg.train_length)
                               for _, pairs in probes)) for plan in plans]
  kept, copies = data.distinct_panels(curves)
  fig, axes = plt.subplots(1, len(probes), figsize=(5.5 * len(probes), 4.2), squeeze=False)
  colors = plt.get_cmap("tab10")
  for row, (ax, (probe, _)) in enumerate(zip(axes[0], probes)):
    for i in kept:
      label, scores = curves[i]
      ax.plot(distances, scores[row], lw=0.8, color=colors(i % 10), label=label)
    ax.set_xscale("log", base=2)
    ax.axvline(cfg.train_length, color="k", ls=":", lw=1)
    ax.set_xlabel("relative distance i - j (tokens)")
    ax.set_ylabel("score / score at distance 0")
    ax.set_title(f"probe: {probe} (current length {max_distance + 1})", fontsize=9)
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  dist = _save(fig, figures_dir, "similarity_distance.png",
               f"Analytic score vs relative distance (every distance from 1 to {max_distance} tokens, "
               f"{cfg.analytic_scale}x the training length), normalised by each method's score at distance 0; "
               "length-dependent methods resolved at the longest window."
               + data.coincidence_note(copies, f"at {max_distance + 1} tokens for every probe"))
  return [heat, dist]


def attention_figures(rows, cfg, arrays_dir, figures_dir) -> list[Figure]:
  files = sorted(glob.glob(os.path.join(arrays_dir, "attention_*.npz")))
  if not files:
    return []
  att = results_lib.select(rows, kind="attention")
  plans = [(group[0]["plan_id"], label) for label, group in data.by_plan(att)]
  scales = sorted({int(r["scale"]) for r in att})
  run = att[0]["run"]
  n_layers = cfg.base.model.n_layers

  def load(plan, scale):
    plan_id, label = plan
    # Studies run before plans had ids named the files by the label.
    for name in (attention_file(run, plan_id, scale), f"attention_{run}_{plans_lib.slug(label)}_{scale}x.npz"):
      if os.path.exists(os.path.join(arrays_dir, name)):
        return np.load(os.path.join(arrays_dir, name))
    return None

  # One column per (encoding, window) whose maps differ from every other column's at that window.
  columns, notes = [], []
  for scale in scales:
    saved = [(plan, load(plan, scale)) for plan in plans]
    saved = [(plan, f) for plan, f in saved if f is not None and "last_block" in f]
    panels = [(plan[1], (f["last_block"], f["mass"])) for plan, f in saved]
    kept, copies = data.distinct_panels(panels)
    columns += [(saved[i][0][1], scale, saved[i][1]) for i in kept]
    if copies:
      notes.append(data.coincidence_note(copies, f"at {scale * cfg.train_length} tokens").strip())
  if not columns:
    return []
  fig, axes = plt.subplots(n_layers, len(columns), figsize=(1.5 * len(columns) + 1.2, 1.5 * n_layers + 0.9),
                           squeeze=False)
  for col, (label, scale, saved) in enumerate(columns):
    block = saved["last_block"]
    start = int(saved["length"]) - block.shape[-1]
    for layer in range(n_layers):
      ax = axes[layer, col]
      with np.errstate(divide="ignore"):  # the causal future (probability 0) stays blank
        shown = np.where(block[layer] > 0, np.log10(block[layer]), np.nan)
      image = ax.imshow(shown, cmap="magma", vmin=-5, vmax=0, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if layer == 0:
        ax.set_title(f"{label}\n{scale}x, tokens {start}-{int(saved['length']) - 1}", fontsize=6)
      if col == 0:
        ax.set_ylabel(f"layer {layer}", fontsize=7)
  fig.suptitle("Mean attention (log10, over heads and documents), last queries vs last keys of the window, "
               "one cell per token", fontsize=9)
  fig.tight_layout(rect=(0, 0, 0.93, 1))
  fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="log10 attention probability")
  maps_fig = _save(fig, figures_dir, "attention_maps.png",
                   f"Empirical attention of base model {run} at token resolution: the last "
                   f"{ATTENTION_PANEL_TOKENS} queries against the last {ATTENTION_PANEL_TOKENS} keys (the whole "
                   "window when shorter; blank: the causal future) of windows of "
                   f"{', '.join(str(s) + 'x' for s in scales)} the training length, per layer, under each encoding "
                   "(the diagonal is each token attending to itself; attention further back is in the "
                   "mass-by-distance figure)." + (" " + " ".join(notes) if notes else ""))

  fig, axes = plt.subplots(1, n_layers, figsize=(4 * n_layers, 3.6), squeeze=False)
  colors = plt.get_cmap("tab10")
  styles = ["-", "--", ":", "-."]
  color_of = {label: colors(i % 10) for i, (_, label) in enumerate(plans)}
  for label, scale, saved in columns:  # the copies dropped above would draw the same curves
    centers, density = data.attention_density(saved)  # per token of distance
    for layer in range(n_layers):
      axes[0, layer].plot(centers, density[layer], styles[scales.index(scale) % 4], color=color_of[label], lw=1,
                          label=f"{label} {scale}x" if layer == 0 else None)
  for layer in range(n_layers):
    ax = axes[0, layer]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axvline(cfg.train_length, color="k", ls=":", lw=1)
    ax.set_title(f"layer {layer}", fontsize=9)
    ax.set_xlabel("relative distance bin [2^k, 2^(k+1))")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("attention mass per token of distance")
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  mass_fig = _save(fig, figures_dir, "attention_distance.png",
                   "Attention mass by relative distance, per token of distance in log2 bins (averaged over queries, "
                   f"heads and documents): where the model looks at {', '.join(str(s) + 'x' for s in scales)} its "
                   "training length, at every distance out to the whole window."
                   + (" " + " ".join(notes) if notes else ""))
  return [maps_fig, mass_fig]


def retrieval_figures(rows, cfg, figures_dir) -> list[Figure]:
  cells = results_lib.select(rows, kind="passkey")
  if not cells:
    return []
  groups = data.by_run(cells)
  lengths = sorted({r["length"] for r in cells})
  depths = sorted({r["depth"] for r in cells})
  fig, axes = plt.subplots(2, len(groups), figsize=(2.3 * len(groups) + 1.2, 5.6), squeeze=False)
  for col, group in enumerate(groups.values()):
    label = run_label(group[0])
    for row, metric in enumerate(("accuracy", "token_accuracy")):
      grid = data.retrieval_grid(group, metric, lengths, depths)
      ax = axes[row, col]
      image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
      ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=6, rotation=45)
      ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=6)
      if row == 0:
        ax.set_title(label, fontsize=7)
      if col == 0:
        ax.set_ylabel(f"{metric.replace('_', ' ')}\nkey depth", fontsize=7)
  fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02)
  fig.suptitle("Passkey retrieval over context length x key depth (top: exact greedy match; bottom: fraction "
               "of answer tokens that are the argmax)", fontsize=9)
  heat = _save(fig, figures_dir, "passkey.png",
               "Passkey retrieval accuracy over context length x key depth: base models under each encoding "
               f"zero-shot and the fine-tuned models at their training length and beyond; {cfg.passkey_samples} "
               "examples per cell and seed.")

  fig, (ax_mid, ax_len, ax_lines) = plt.subplots(1, 3, figsize=(15, 3.8))
  colors = plt.get_cmap("tab10")
  middle = data.by_run(results_lib.select(rows, kind="middle"))
  lines = data.by_run(results_lib.select(rows, kind="lines"))
  for i, (key, group) in enumerate(groups.items()):
    color, label = colors(i % 10), run_label(group[0])
    if key in middle:
      xs, mean, _, _, _ = data.curve(middle[key], "token_accuracy", x="depth")
      ax_mid.plot(xs, mean, ":", color=color, lw=1)
      xs, mean, _, _, _ = data.curve(middle[key], "accuracy", x="depth")
      ax_mid.plot(xs, mean, marker="o", ms=3, color=color, label=label)
    xs, mean, _, _, _ = data.curve(group, "accuracy")
    ax_len.plot(xs, mean, marker="o", ms=3, color=color, label=label)
    xs, mean, _, _, _ = data.curve(group, "token_accuracy")
    ax_len.plot(xs, mean, ":", color=color, lw=1)
    if key in lines:
      xs, mean, _, _, _ = data.curve(lines[key], "accuracy")
      ax_lines.plot(xs, mean, marker="o", ms=3, color=color, label=label)
      xs, mean, _, _, _ = data.curve(lines[key], "token_accuracy")
      ax_lines.plot(xs, mean, ":", color=color, lw=1)
  ax_mid.set(xlabel="key depth", ylabel="accuracy", title=f"lost in the middle: passkey at {cfg.middle_length} tokens")
  ax_len.set(xlabel="context length", ylabel="accuracy (mean over depths)", title="passkey by length")
  ax_lines.set(xlabel="context length", ylabel="accuracy", title="key-value lines")
  for ax in (ax_len, ax_lines):
    ax.set_xscale("log", base=2)
    ax.axvline(cfg.train_length, color="k", ls=":", lw=1)
  for ax in (ax_mid, ax_len, ax_lines):
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.title.set_fontsize(9)
  ax_mid.legend(fontsize=6)
  fig.tight_layout()
  curves = _save(fig, figures_dir, "retrieval_curves.png",
                 "Passkey accuracy by key depth at a fixed length (lost in the middle) and by length, and "
                 "LongChat-Lines-style key-value retrieval by length; solid: exact match, dotted: answer-token "
                 "accuracy.")
  return [heat, curves]


def ape_figure(rows, cfg, figures_dir) -> Figure | None:
  ape = _ppl(rows, run_kind="ape", split=cfg.eval_split)
  if not ape:
    return None
  seed = ape[0]["seed"]
  groups = data.by_plan(ape)
  base = _ppl(rows, run_kind="base", seed=seed, split=cfg.eval_split)
  for plan_id in (ROPE, PI_MATCHED, DYNAMIC_NTK, DYNAMIC_YARN):
    groups.append((f"RoPE model: {data.plan_label(base, plan_id)}", _ppl(base, plan_id=plan_id)))
  fig, ax = plt.subplots(figsize=(8, 5))
  ylim = data.value_range(groups, "bits_per_byte")
  _draw_curves(ax, groups, "bits_per_byte", cfg.train_length, ylim=ylim)
  _draw_baselines(ax, rows, cfg, ylim)
  ax.set_title(f"LongEmbed's APE extensions vs the RoPE family (seed {seed}, same data and steps)", fontsize=10)
  fig.tight_layout()
  return _save(fig, figures_dir, "ape_study.png",
               f"A {cfg.ape_model.method.name}-APE model extended without training by parallel context windows, grouped, recurrent "
               "and interpolated positions, against the RoPE model of the same seed under RoPE-family methods, "
               "with the reference lines of the other perplexity figures.")


def perplexity_variants(rows, cfg, figures_dir) -> Figure | None:
  """The declared pretraining variants as trained, against the RoPE base models of the same seeds."""
  split = cfg.eval_split
  variants = _ppl(rows, run_kind="variant", plan_id=TRAINED, split=split)
  if not variants:
    return None
  seeds = sorted({r["seed"] for r in variants})
  groups = [("RoPE base model", [r for r in _ppl(rows, run_kind="base", plan_id=ROPE, split=split)
                                 if r["seed"] in seeds and r["length"] >= cfg.train_length])]
  groups += [(f"{run.label} (pretrained)", _ppl(variants, method=run.label)) for run in cfg.pretrain_variants]
  groups = [(label, group) for label, group in groups if group]
  fig, ax = plt.subplots(figsize=(8, 5))
  ylim = data.value_range(groups, "bits_per_byte")
  _draw_curves(ax, groups, "bits_per_byte", cfg.train_length, ylim=ylim)
  _draw_baselines(ax, rows, cfg, ylim)
  ax.set_title("Pretraining variants, each evaluated with the encoding it was trained with", fontsize=10)
  fig.tight_layout()
  return _save(fig, figures_dir, "perplexity_variants.png",
               "Bits per byte vs evaluation window of the declared pretraining variants (same model, data and "
               f"steps as the base models, seeds {seeds}) against the RoPE base models of the same seeds "
               "(mean over seeds, band: min to max). Dotted: training length.")


def draw_study(rows: Sequence[dict], arrays_dir: str, figures_dir: str, cfg) -> list[Figure]:
  """Every study figure that the rows support; returns them in report order."""
  figures = [perplexity_zero_shot(rows, cfg, figures_dir), perplexity_finetuned(rows, cfg, figures_dir),
             perplexity_variants(rows, cfg, figures_dir)]
  figures.append(giraffe_grid(rows, cfg, figures_dir))
  figures.extend(similarity_figures(cfg, arrays_dir, figures_dir))
  figures.extend(attention_figures(rows, cfg, arrays_dir, figures_dir))
  figures.extend(retrieval_figures(rows, cfg, figures_dir))
  figures.append(ape_figure(rows, cfg, figures_dir))
  return [f for f in figures if f is not None]
