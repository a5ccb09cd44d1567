"""The real-model zero-shot study: config checks, the measurements against independent
paths, and the whole pipeline on SmolLM2's first two layers at a few hundred tokens."""

import json
import os

import jax
import numpy as np
import pytest

from configs import study_real
from rope_lab import pe, results, zero_shot
from rope_lab.data import Window
from rope_lab.errors import ConfigError
from rope_lab.evaluate.attention_maps import mean_attention_maps
from rope_lab.evaluate.perplexity import eval_model_config, window_nll
from rope_lab.model.forward import encoding_hooks
from rope_lab.zero_shot import config as config_lib
from rope_lab.zero_shot import measure



def ci_config(**overrides):
  config = study_real.get_config("size=ci")
  config.update(overrides)
  return zero_shot.config_from_dict(config)


def test_methods_parse_and_bad_fields_are_named():
  m = config_lib.parse_method("se=self_extend:group_size=4:window=2048")
  assert (m.label, m.name, dict(m.params)) == ("se", "self_extend", {"group_size": 4, "window": 2048})
  assert config_lib.parse_method("rope").label == "rope"
  with pytest.raises(ConfigError, match="methods"):
    ci_config(methods=("pi=pi:factor=2", "rope"))  # the model as trained must come first
  with pytest.raises(ConfigError, match="method 'x'"):
    ci_config(methods=("rope", "x=no_such_method"))
  with pytest.raises(ConfigError, match="retrieval_methods"):
    ci_config(retrieval_methods=("yarn",))
  with pytest.raises(ConfigError, match="block"):
    ci_config(block=100)
  with pytest.raises(ConfigError, match="unknown config fields"):
    zero_shot.config_from_dict({**study_real.get_config("size=ci").to_dict(), "lenghts": (1,)})


def test_every_size_is_a_valid_config():
  for size in study_real.SIZES:
    cfg = zero_shot.config_from_dict(study_real.get_config(f"size={size}"))
    for m in cfg.methods:  # every row builds with the model's base and training length
      m.encoding({"base": 1e5, "original_max_position_embeddings": 8192})


@pytest.fixture(scope="module")
def small_model():
  from rope_lab.data import assets  # pylint: disable=g-import-not-at-top
  from rope_lab.interop import gguf  # pylint: disable=g-import-not-at-top
  return gguf.load(assets.smollm2_gguf(), n_layers=2)


def test_window_losses_and_attention_mass_match_independent_paths(small_model):
  cfg, params = small_model.config, small_model.params
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, size=257).astype(np.int32)
  for encoding in (pe.make("rope", base=1e5), pe.make("pi", base=1e5, factor=2.0)):
    hooks = encoding_hooks(cfg, encoding, 256)
    score = measure.score_window(cfg, params, tokens, hooks, query_ends=(128, 256), n_queries=8)
    # Losses: the evaluation path's own scorer on the same window.
    window = Window(inputs=tokens[:-1], targets=tokens[1:], loss_mask=np.ones(256, np.float32))
    want = window_nll(eval_model_config(cfg, 256), params, [window], hooks)
    np.testing.assert_allclose(score.losses.sum(), want.total, rtol=1e-4)
    # Attention mass: the reference path's full [L, L] maps, binned by hand.
    edges = np.asarray(measure.attention_edges(256))
    for end in (128, 256):
      maps = mean_attention_maps(cfg.replace(attention="reference") if hasattr(cfg, "replace") else
                                 __import__("dataclasses").replace(cfg, attention="reference"), params, encoding,
                                 tokens[None, :end])
      rows = maps[:, end - 8:end]  # [layers, 8, end]
      distance = np.arange(end - 8, end)[:, None] - np.arange(end)[None]
      want_mass = np.stack([[layer[(distance >= lo) & (distance < hi)].sum() / 8 for lo, hi in zip(edges, edges[1:])]
                            for layer in rows])
      np.testing.assert_allclose(score.attention[end], want_mass, atol=2e-5)
      np.testing.assert_allclose(score.attention[end].sum(axis=1), 1.0, atol=1e-5)


def test_the_study_runs_resumes_and_reports(small_model, tmp_path, monkeypatch):
  monkeypatch.setattr(zero_shot.run.gguf, "load", lambda path, **unused: small_model)
  cfg = ci_config(methods=("rope", "pi=pi:factor=2", "dynamic_ntk=dynamic_ntk:factor=2"), lengths=(256, 512),
                  attention_lengths=(512,), retrieval_methods=("rope",))
  workdir = str(tmp_path / "study")
  report = zero_shot.run_study(cfg, workdir, log=lambda *a: None)
  rows = results.read_rows(os.path.join(workdir, "results.jsonl"))
  ppl = results.select(rows, kind="perplexity")
  assert len(ppl) == len(cfg.methods) * len(cfg.lengths)
  by = {(r["method"], r["length"]): r for r in ppl}
  # Static PI reads every length from its longest window; Dynamic NTK below the training
  # length (8192) acts as RoPE, so RoPE's window serves it.
  assert by[("pi", 256)]["served_by"] == "pi" and by[("pi", 256)]["forward_length"] == 512
  assert by[("dynamic_ntk", 512)]["served_by"] == "rope"
  assert by[("dynamic_ntk", 512)]["metrics"]["loss"] == by[("rope", 512)]["metrics"]["loss"]
  # A length read from a longer window equals a window of its own (evaluation path).
  study = zero_shot.run.Study(cfg, workdir, log=lambda *a: None)
  doc = zero_shot.documents.load_document("essays", study.tokenizer, 257)
  encoding = study.encodings["pi"]
  window = Window(inputs=doc.tokens[:-1], targets=doc.tokens[1:], loss_mask=np.ones(256, np.float32))
  own = window_nll(eval_model_config(small_model.config, 256), small_model.params, [window],
                   encoding_hooks(small_model.config, encoding, 256))
  np.testing.assert_allclose(by[("pi", 256)]["metrics"]["loss"], own.loss, rtol=1e-4)
  assert len(results.select(rows, kind="attention")) == len(cfg.methods) * len(cfg.attention_lengths)
  assert {r["method"] for r in results.select(rows, kind="passkey")} == set(cfg.retrieval_methods)
  assert len(results.select(rows, kind="heatmap")) == len(cfg.methods)
  text = open(report, encoding="utf-8").read()
  assert "## Claims" in text and "untestable" in text  # no length beyond 8192 at this size
  for name in ("real_perplexity.png", "real_loss_by_position.png", "real_attention_by_distance.png"):
    assert os.path.exists(os.path.join(workdir, "figures", name))
  # Started again: nothing is measured twice; another config in the same directory is refused.
  zero_shot.run_study(cfg, workdir, log=lambda *a: None)
  assert len(results.read_rows(os.path.join(workdir, "results.jsonl"))) == len(rows)
  with pytest.raises(ConfigError, match="another study"):
    zero_shot.run_study(ci_config(seed=1), workdir, log=lambda *a: None)


def test_retrieval_intervals_match_published_examples():
  from rope_lab.zero_shot.claims import newcombe, wilson  # pylint: disable=g-import-not-at-top
  # Newcombe (1998), Statistics in Medicine 17:873, Table II: 56/70 vs 48/80, method 10.
  found = newcombe(56, 70, 48, 80)
  assert (round(found.low, 4), round(found.high, 4)) == (0.0524, 0.3339)
  # Wilson intervals of the same paper's Table I: 81/263 -> (0.2553, 0.3662); 0/10 -> (0, 0.2775).
  assert (round(wilson(81, 263).low, 4), round(wilson(81, 263).high, 4)) == (0.2553, 0.3662)
  assert round(wilson(0, 10).high, 4) == 0.2775
  assert wilson(2, 2).low > 0.3  # two of two is far from certain
