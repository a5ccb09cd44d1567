"""The study's figures show what they claim: heatmaps at token resolution, no duplicate panels,
the reference lines on every perplexity figure, and a fixed, configured set of test documents."""

import dataclasses

import numpy as np
import pytest

from rope_lab import config as config_lib
from rope_lab import results as results_lib
from rope_lab.data import DataConfig, get_tokenizer
from rope_lab.errors import ConfigError
from rope_lab.evaluate import analytic, attention_maps, plans as plans_lib
from rope_lab.study import StudyConfig
from rope_lab.study import figure_data as data
from rope_lab.study import figures
from rope_lab.study.measurements import attention_file, evaluation_documents
from tests import tiny_config


def _tiny_study(**changes) -> StudyConfig:
  base = config_lib.experiment_from_config_dict(tiny_config.get_config())  # 16-token rows, head_dim 8
  return dataclasses.replace(StudyConfig(base=base, seeds=(0,), eval_scales=(1, 2), eval_doc_tokens=64,
                                         static_scale=2.0, analytic_scale=2), **changes)


@pytest.fixture
def drawn(monkeypatch):
  """Every figure the study draws, kept open: name -> (matplotlib figure, caption)."""
  saved = {}

  def keep(fig, figures_dir, name, caption):
    saved[name] = (fig, caption)
    return figures.Figure(name, name, caption)

  monkeypatch.setattr(figures, "_save", keep)
  yield saved
  for fig, _ in saved.values():
    figures.plt.close(fig)


def test_similarity_panel_keeps_a_two_token_period():
  # One rotary pair turning by pi per token: cos(pi (i - j)) = (-1)^(i - j), worked by hand.
  # Pooling 4 x 4 (or any even block) would average it to 0.
  alternating = plans_lib.EncodingPlan.of("pi per token", {
      "name": "longrope", "short_factor": [1 / np.pi], "long_factor": [1 / np.pi], "factor": 1.0,
      "original_max_position_embeddings": 64, "head_dim": 2})
  pairs = analytic.probe_pairs("ones", 2)
  panel = data.similarity_panel(alternating, alternating, pairs, n_tokens=16, length=64, train_length=64)
  i, j = np.indices(panel.shape)
  expected = np.where(i >= j, (-1.0) ** (i - j), np.nan)
  np.testing.assert_allclose(panel, expected, atol=1e-5)
  assert panel.shape == (16, 16)


def test_distinct_panels_drop_copies_and_name_them():
  a, b = np.eye(3), np.arange(9.0).reshape(3, 3)
  a[0, 1] = np.nan  # the causal future matches itself
  panels = [("A", (a, b)), ("B", (b, a)), ("A again", (a.copy(), b.copy())), ("nearly A", (a, b + 1e-3))]
  kept, copies = data.distinct_panels(panels)
  assert kept == [0, 1, 3] and copies == [("A", ["A again"])]
  note = data.coincidence_note(copies, "at 512 tokens")
  assert "A again = A" in note and "at 512 tokens" in note
  assert data.coincidence_note([], "anywhere") == ""


def test_similarity_heatmaps_are_unpooled_with_colour_bar_and_no_duplicate_columns(drawn, tmp_path):
  cfg = _tiny_study()  # window 16 x 2 = 32 tokens: PI s=L/L0 is PI s=2 there, Dynamic YaRN is YaRN s=2
  figures.similarity_figures(cfg, str(tmp_path), str(tmp_path))
  fig, caption = drawn["similarity_heatmaps.png"]
  panels = [ax for ax in fig.axes if ax.images]
  assert {ax.images[0].get_array().shape for ax in panels} == {(32, 32)}  # one cell per token pair
  titles = [ax.get_title() for ax in panels if ax.get_title()]
  assert len(titles) == len(set(titles)) and "PI s=L/L0" not in titles and "Dynamic YaRN" not in titles
  assert "PI s=L/L0 = PI s=2" in caption and "Dynamic YaRN = YaRN s=2" in caption and "at 32 tokens" in caption
  assert len(fig.axes) == len(panels) + 1  # the colour bar
  # The columns left differ pairwise, so nothing in the figure is drawn twice.
  arrays = [np.asarray(ax.images[0].get_array().filled(np.nan)) for ax in panels]
  for x in range(len(arrays)):
    for y in range(x + 1, len(arrays)):
      if panels[x].get_subplotspec().rowspan == panels[y].get_subplotspec().rowspan:
        assert not np.allclose(arrays[x], arrays[y], equal_nan=True)
  # The score by distance reaches the longest window at every distance, the copies named again.
  _, caption = drawn["similarity_distance.png"]
  assert "every distance from 1 to 32 tokens" in caption
  line = drawn["similarity_distance.png"][0].axes[0].lines[0]
  assert len(line.get_xdata()) == 32


def test_attention_maps_are_token_resolution_and_drop_equal_encodings(drawn, tmp_path):
  cfg = _tiny_study(attention_scales=(1, 2))
  rng = np.random.default_rng(0)
  rows, run = [], "base_s0"
  maps_by_plan = {}
  for scale in (1, 2):
    length = 16 * scale
    raw = np.tril(rng.random((1, length, length)))
    raw /= raw.sum(-1, keepdims=True)
    shared = raw  # RoPE and PI s=L/L0 (factor 1 at 1x) give the same maps at 1x
    for plan_id, label in (("rope", "RoPE"), ("pi_matched", "PI s=L/L0"), ("yarn_s2", "YaRN s=2")):
      maps = shared if plan_id != "yarn_s2" and (scale == 1 or plan_id == "rope") else np.tril(
          rng.random((1, length, length)))
      maps_by_plan[(plan_id, scale)] = maps
      np.savez(tmp_path / attention_file(run, plan_id, scale), length=length,
               last_block=attention_maps.last_block(maps, 8), mass=attention_maps.mass_by_distance(maps))
      rows.append(results_lib.make_row("attention", f"a|{plan_id}|{scale}", metrics={}, seed=0, config_hash="h",
                                       commit="c", run=run, plan_id=plan_id, plan=label, scale=scale, layer=0))
  figures.attention_figures(rows, cfg, str(tmp_path), str(tmp_path))
  fig, caption = drawn["attention_maps.png"]
  panels = [ax for ax in fig.axes if ax.images]
  assert len(panels) == 5  # 3 encodings x 2 windows, less PI s=L/L0 at 1x
  assert "PI s=L/L0 = RoPE (at 16 tokens)" in caption and "at 32 tokens" not in caption
  # Unpooled: the last 8 queries against the last 8 keys, cell for cell.
  shown = panels[-1].images[0].get_array().filled(np.nan)
  block = maps_by_plan[("yarn_s2", 2)][0, -8:, -8:]
  expected = np.full((8, 8), np.nan)
  expected[block > 0] = np.log10(block[block > 0])  # blank above the diagonal
  np.testing.assert_allclose(shown, expected, rtol=1e-6)
  assert np.isnan(shown[0, 1]) and np.isfinite(np.diag(shown)).all()
  legend = [t.get_text() for t in drawn["attention_distance.png"][0].axes[0].get_legend().get_texts()]
  assert "PI s=L/L0 1x" not in legend and "PI s=L/L0 2x" in legend


def _ppl_row(plan_id, label, length, bpb, *, run_kind="base", run="base_s0", method="rope", train_scale=1):
  return results_lib.make_row("perplexity", f"p|{run}|{plan_id}|{length}", metrics={"bits_per_byte": bpb},
                              seed=0, config_hash="h", commit="c", run=run, run_kind=run_kind, method=method,
                              train_scale=train_scale, plan_id=plan_id, plan=label, length=length,
                              scale=length / 16, split="test")


def test_every_perplexity_figure_draws_the_truncation_ngram_and_unigram_lines(drawn, tmp_path):
  cfg = _tiny_study(finetunes=("pi=pi",))
  rows = [_ppl_row("rope", "RoPE", 4, 7.5)]  # the truncation line: 16 x 0.25 tokens
  for plan_id, label in (("rope", "RoPE"), ("pi_s2", "PI s=2"), ("yarn_s2", "YaRN s=2"),
                         ("dynamic_yarn", "Dynamic YaRN")):
    rows += [_ppl_row(plan_id, label, n, 6.0 + n / 32) for n in (16, 32)]
  rows += [_ppl_row("trained", "PI s=2 (trained)", n, 5.5, run_kind="finetune", run="ft_pi_s0", method="pi",
                    train_scale=2) for n in (16, 32)]
  rows += [_ppl_row("pcw", "PCW", n, 6.5 + n / 64, run_kind="ape", run="ape_s0", method="learned") for n in (16, 32)]
  rows.append(results_lib.make_row("baseline", "b|ngram5|test", metrics={"bits_per_byte": 3.25,
                                                                        "unigram_entropy": 4.5},
                                   seed=None, config_hash="h", commit="c", split="test", order=5))
  lines = data.baseline_lines(rows, cfg)
  assert [value for _, value in lines] == [7.5, 3.25, 4.5]
  figures.perplexity_zero_shot(rows, cfg, str(tmp_path))
  figures.perplexity_finetuned(rows, cfg, str(tmp_path))
  figures.ape_figure(rows, cfg, str(tmp_path))
  assert set(drawn) == {"perplexity_zero_shot.png", "perplexity_finetuned.png", "ape_study.png"}
  for name, (fig, _) in drawn.items():
    ax = fig.axes[0]
    horizontal = {line.get_label(): line.get_ydata()[0] for line in ax.lines
                  if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2}
    labels = " | ".join(horizontal)
    assert "window cut to 4 tokens" in labels and "byte n-gram" in labels and "unigram entropy" in labels, name
    assert sorted(horizontal.values()) == [3.25, 4.5, 7.5], name
    low, high = ax.get_ylim()
    assert low < 3.25 and high > 7.5, name  # every line in view


def test_evaluation_documents_are_the_configured_number_chosen_by_id(tmp_path):
  (tmp_path / "data").mkdir()
  data_cfg = DataConfig(dataset="kjv", data_dir=str(tmp_path / "data"))
  base = config_lib.experiment_from_config_dict(tiny_config.get_config())
  cfg = StudyConfig(base=dataclasses.replace(base, data=data_cfg), eval_docs=6, eval_doc_tokens=8192)
  tokenizer = get_tokenizer(data_cfg)
  docs = evaluation_documents(cfg, "test", tokenizer)
  # docs/data.md: the KJV test split holds 7 books; Jude (3,668 bytes) is shorter than 8192 tokens.
  assert [d.doc_id for d in docs] == ["1-10-2_Samuel", "1-11-1_Kings", "1-12-2_Kings", "1-23-Isaiah",
                                      "1-35-Habakkuk", "2-15-1_Timothy"]
  assert all(len(d.tokens) == 8192 for d in docs)
  again = evaluation_documents(dataclasses.replace(cfg, eval_docs=4), "test", tokenizer)
  assert [d.doc_id for d in again] == [d.doc_id for d in docs[:4]]
  assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(again, docs))
  with pytest.raises(ConfigError, match="config.eval_docs must be at most the 6 documents"):
    evaluation_documents(dataclasses.replace(cfg, eval_docs=7), "test", tokenizer)


def test_documents_shorter_than_the_longest_window_are_refused_by_the_config():
  with pytest.raises(ConfigError, match="config.eval_doc_tokens must be >= the longest window"):
    _tiny_study(eval_scales=(1, 8))  # 128-token windows from 64-token documents
