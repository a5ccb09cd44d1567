"""The reference study end to end in miniature, and its configuration boundary."""

import dataclasses
import json
import os

import pytest

from rope_lab import config as config_lib
from rope_lab import results as results_lib
from rope_lab import study
from tests import tiny_config
from tests import train_helpers as th




def miniature(**changes) -> study.StudyConfig:
  """The study at test size: 1-layer width-32 model, rows of 16 random bytes, 2 lengths, 1 seed."""
  base = tiny_config.get_config()
  base.update(steps=4, checkpoint_every=0)
  cfg = study.StudyConfig(
      base=config_lib.experiment_from_config_dict(base), seeds=(0,), eval_scales=(1, 2),
      eval_docs=1, eval_doc_tokens=192, static_scale=2.0, finetune_scale=2, finetune_steps=2,  # 192 tokens: 11 windows at 32, enough units for an interval
      finetune_learning_rates=(1e-2,), finetune_warmup_steps=0, grid_train_scales=(2,),
      grid_seeds=1, ape=True, passkey_lengths=(176,), passkey_depths=(0.0, 1.0),
      passkey_samples=1, middle_length=176, middle_depths=2, middle_samples=1,
      lines_lengths=(512,), lines_samples=1, passkey_mix=0.0, ngram_train_bytes=20000,
      attention_scales=(1, 2), attention_docs=1, analytic_scale=2, longrope_population=4,
      longrope_generations=1, longrope_mutations=2, longrope_crossovers=2, longrope_top_k=2, longrope_docs=1)
  return dataclasses.replace(cfg, **changes)


def test_miniature_study_runs_end_to_end_and_resumes(tmp_path):
  workdir = str(tmp_path / "study")
  messages = []
  report_path = study.run_study(miniature(), workdir, log=messages.append)

  rows = results_lib.read_rows(os.path.join(workdir, "results.jsonl"))
  ppl = results_lib.select(rows, kind="perplexity")
  # 10 zero-shot plans and the searched LongRoPE factors on the base model, 2 on the PI
  # fine-tune, 1 on the YaRN one, 4 APE.
  assert len({(r["run"], r["plan"]) for r in ppl}) == 11 + 2 + 1 + 4
  assert results_lib.select(rows, kind="longrope_search") and "## LongRoPE: searched factors" in open(report_path).read()
  assert {r["length"] for r in ppl} == {4, 16, 32}  # 4: the base model with its window cut to a quarter
  (baseline,) = results_lib.select(rows, kind="baseline")
  assert baseline["order"] == 5 and baseline["metrics"]["train_bytes"] > 0
  assert 0 < baseline["metrics"]["unigram_entropy"] <= 8.0 and 0 < baseline["metrics"]["bits_per_byte"] < 9.0
  for row in rows:
    assert row["commit"] and row["config_hash"] and "seed" in row
  for row in ppl:
    assert row["split"] == "test" and row["metrics"]["tokens"] == 191  # every target of the document once
    assert row["metrics"]["loss"] > 0 and row["metrics"]["bits_per_byte"] > 0
  # Random bytes carry 8 bits each: a model that learnt nothing scores about 8 bits per byte.
  rope_1x = results_lib.select(ppl, plan="RoPE", length=16)[0]["metrics"]["bits_per_byte"]
  assert 7.0 < rope_1x < 9.0
  # The same encoding, length and parameters give the same number whichever way they are named.
  matched = results_lib.select(ppl, run_kind="base", plan="PI s=L/L0", length=16)[0]
  assert matched["metrics"]["loss"] == pytest.approx(
      results_lib.select(ppl, run_kind="base", plan="RoPE", length=16)[0]["metrics"]["loss"], rel=1e-6)
  passkey = results_lib.select(rows, kind="passkey")
  assert {(r["run_kind"], r["depth"]) for r in passkey} == {(k, d) for k in ("base", "finetune") for d in (0.0, 1.0)}
  assert results_lib.select(rows, kind="lines") and results_lib.select(rows, kind="middle")
  assert len(results_lib.select(rows, kind="attention")) == 4 * 2  # 4 encodings x 2 lengths x 1 layer

  figures = sorted(os.listdir(os.path.join(workdir, "figures")))
  for name in ("perplexity_zero_shot.png", "perplexity_finetuned.png", "giraffe_grid.png",
               "similarity_heatmaps.png", "similarity_distance.png", "attention_maps.png",
               "attention_distance.png", "passkey.png", "retrieval_curves.png", "ape_study.png"):
    assert name in figures
  report = open(report_path).read()
  assert "## Claims" in report and "| claim |" in report and "## Reading the claims" in report
  assert "window cut to 4 tokens" in report and "byte n-gram" in report and "unigram entropy" in report
  assert "Documents: the first 1 of the split by id among those with at least 192 tokens" in report
  assert "PI s=L/L0 = PI s=2" in report  # a heatmap column equal to another's is named, not drawn
  assert "![perplexity_zero_shot.png](figures/perplexity_zero_shot.png)" in report
  assert sum(report.count(f"**{v}**") for v in ("agrees", "disagrees", "inconclusive", "untestable")) \
      == len(study.CLAIMS)
  # Rows now carry per-window losses, so the claims measured here have intervals.
  assert all(r["windows"]["nll"] for r in ppl)
  with_interval = [c for c in study.evaluate_claims(rows, miniature()) if c.interval is not None]
  assert with_interval and all(c.interval.low <= c.value <= c.interval.high for c in with_interval)
  for c in with_interval:  # the prose states the same numbers as the claims computed from the rows
    assert f"{c.value:+.3f} ({'bits/byte' if c.statistic == 'difference' else 'relative change'}), 95% interval " \
        f"[{c.interval.low:+.3f}, {c.interval.high:+.3f}]" in report
  with open(os.path.join(workdir, "study_config.json")) as f:
    assert json.load(f)["base"]["train"]["seq_len"] == 16
  assert study.read_study_config(workdir) == miniature()

  # Evaluating the base checkpoint on its own gives the study's numbers for the same encoding.
  from rope_lab.evaluate import checkpoint_eval, plans
  settings = checkpoint_eval.EvalSettings(lengths=(16, 32), max_docs=1, doc_tokens=192, passkey_lengths=(176,),
                                          passkey_depths=(0.5,), passkey_samples=1)
  plan = plans.plan_from_json('{"name": "pi", "factor": "matched", "label": "PI s=L/L0"}')
  own = checkpoint_eval.evaluate_checkpoint(os.path.join(workdir, "runs", "base_s0"), [plan], settings,
                                            str(tmp_path / "eval.jsonl"), log=lambda m: None)
  assert [r["kind"] for r in own] == ["perplexity", "perplexity", "passkey"]
  for row in own[:2]:
    (same,) = results_lib.select(ppl, run="base_s0", plan="PI s=L/L0", length=row["length"])
    assert row["metrics"]["loss"] == pytest.approx(same["metrics"]["loss"], rel=1e-6)
  assert len(results_lib.read_rows(str(tmp_path / "eval.jsonl"))) == 3

  # Resuming in the same directory trains and measures nothing again.
  again = []
  resumed = study.Study(miniature(), workdir, log=again.append)
  resumed.finetune_lr = resumed.choose_finetune_lr()
  for spec in [study.base_run(resumed.cfg, 0)] + study.finetune_specs(resumed):
    resumed.train(spec)
  study.evaluate_perplexity(resumed, [study.base_run(resumed.cfg, 0, "ape")], study.finetune_specs(resumed))
  assert len(results_lib.read_rows(os.path.join(workdir, "results.jsonl"))) == len(rows)
  assert not [m for m in again if m.startswith("training")]


def test_config_file_variants_convert_to_typed_values():
  full = study.study_config_from_config_dict(th.load_config_file("configs/study.py"))
  quick = study.study_config_from_config_dict(th.load_config_file("configs/study.py", "quick"))
  assert full.seeds == (0, 1, 2) and max(full.eval_scales) >= 16 and full.eval_split == "test"
  assert full.base.train.seq_len == 256 and full.base.encoding.name == "rope"
  assert quick.seeds == (0,) and quick.base.train.steps < full.base.train.steps
  # Every window of the longest length fits in the documents that are scored.
  assert full.eval_doc_tokens >= full.train_length * max(full.eval_scales)


def test_retrieval_mix_too_long_for_the_training_rows_fails_before_training(tmp_path):
  from rope_lab.data.errors import DataConfigError  # pylint: disable=g-import-not-at-top
  from rope_lab.study.measurements import Study  # pylint: disable=g-import-not-at-top
  with pytest.raises(DataConfigError, match="too short"):
    Study(miniature(retrieval_mix=0.2), str(tmp_path / "study"))  # rows of 17 tokens
  assert not os.path.exists(tmp_path / "study" / "runs")


def test_bad_study_fields_name_the_field():
  config = th.load_config_file("configs/study.py", "quick")
  config.stride_fraction = 1.5
  with pytest.raises(config_lib.ConfigError, match="stride_fraction"):
    study.study_config_from_config_dict(config)
  config = th.load_config_file("configs/study.py", "quick")
  config.choice_split = "test"
  with pytest.raises(config_lib.ConfigError, match="choice_split"):
    study.study_config_from_config_dict(config)


def test_the_fine_tuning_rate_is_chosen_on_validation_once(tmp_path, monkeypatch):
  cfg = miniature(finetune_learning_rates=(1e-3, 3e-3, 1e-2))
  runner = study.Study(cfg, str(tmp_path), log=lambda m: None)
  trained, scored = [], []
  validation_loss = {1e-3: 2.5, 3e-3: 2.1, 1e-2: 2.4}

  def fake_perplexity(spec, plan, scales, *, split=None, record=True):
    scored.append((spec.name, split, record))
    return {scales[0]: validation_loss[spec.exp.train.learning_rate]}

  monkeypatch.setattr(runner, "train", lambda spec: trained.append(spec.name))
  monkeypatch.setattr(runner, "perplexity", fake_perplexity)
  assert runner.choose_finetune_lr() == 3e-3
  assert trained == ["ft_pi2_lr0.001_s0", "ft_pi2_lr0.003_s0", "ft_pi2_lr0.01_s0"]
  assert all(split == "validation" and not record for _, split, record in scored)
  (choice,) = results_lib.select(runner.results.read(), kind="choice")
  assert choice["metrics"]["chosen"] == 3e-3 and choice["split"] == "validation"
  # The choice is recorded: asking again reuses it without training or scoring anything.
  trained.clear()
  assert study.Study(cfg, str(tmp_path)).choose_finetune_lr() == 3e-3 and not trained
  # The final fine-tune of the first seed is the chosen candidate's run: not trained twice.
  runner.finetune_lr = 3e-3
  assert "ft_pi2_lr0.003_s0" in [s.name for s in study.finetune_specs(runner)]


def test_the_best_zero_shot_method_for_giraffes_contrast_is_chosen_on_validation(tmp_path, monkeypatch):
  # Giraffe's grid fine-tune at 2a is compared with the best training-free method at 2a x L:
  # every zero-shot plan is scored there on validation (first seed only), and the claim's
  # baseline is the best of those, whatever the test documents say.
  from rope_lab.study import claims, phases  # pylint: disable=g-import-not-at-top
  cfg = miniature(seeds=(0, 1), eval_scales=(1, 2, 4), longrope_search=False)
  runner = study.Study(cfg, str(tmp_path), log=lambda m: None)
  scored = []
  monkeypatch.setattr(runner, "perplexity", lambda spec, plan, scales, *, split=None, record=True:
                      scored.append((spec.name, plan.id, tuple(scales), split)))
  study.evaluate_perplexity(runner, [], [])
  zero_shot = {p.id for p in phases.zero_shot_plans(cfg)}
  chosen_on = [(name, plan, scales) for name, plan, scales, split in scored if split == "validation"]
  assert sorted(chosen_on) == sorted(("base_s0", plan, (4,)) for plan in zero_shot)
  assert {(name, split) for name, _, _, split in scored if split != "validation"} == {("base_s0", None),
                                                                                     ("base_s1", None)}
  # Synthetic rows: YaRN is best on validation, NTK on test; the claim's baseline is YaRN.
  row = lambda plan, split, bpb: {"kind": "perplexity", "split": split, "run_kind": "base", "length": 64,
                                  "plan_id": plan, "plan": plan, "seed": 0, "run": "base_s0",
                                  "metrics": {"bits_per_byte": bpb}}
  rows = [row("yarn_s2", "validation", 1.0), row("ntk_s2", "validation", 1.2), row("yarn_s2", "test", 1.3),
          row("ntk_s2", "test", 1.1)]
  assert claims.best_zero_shot(claims.Context(rows, cfg), 4) == "yarn_s2"
  assert claims.best_zero_shot(claims.Context(rows[2:], cfg), 4) is None  # never chosen on test


def test_plan_ids_are_distinct_and_the_labels_of_older_rows_map_onto_them():
  from rope_lab.evaluate import plans
  every = plans.rope_family_plans(128, base=1e4, scale=4.0) + plans.ape_plans(128, {"name": "learned", "max_length": 128})
  assert len({p.id for p in every}) == len(every)
  assert {p.id for p in every} >= {"rope", "pi_matched", "yarn_s4", "dynamic_yarn", "ape_pcw"}
  for plan in every:
    assert plans.plan_id_of_label(plan.label) == plan.id
  assert plans.plan_id_of_label("YaRN s=2.5") == plans.scaled_id("yarn", 2.5) == "yarn_s2.5"
  given = plans.plan_from_json('{"name": "pi", "factor": 2, "id": "pi_two", "label": "PI x2"}')
  assert (given.id, given.label, given.name) == ("pi_two", "PI x2", "pi")
  assert plans.plan_from_json('{"name": "pi", "factor": 2, "label": "PI s=L/L0"}').id == "pi_s_l_l0"


def test_longembed_needs_each_model_to_retrieve_inside_l_under_its_own_encoding():
  # Synthetic short-passkey rows at L = 32 and 2L (100 examples each). Inside L the base model
  # retrieves under RoPE (its own encoding); YaRN s=4 changes its positions there and retrieves
  # half the time, which must not count against the model. Beyond L: YaRN 0.60, APE PCW 0.20.
  from rope_lab.study import claims  # pylint: disable=g-import-not-at-top
  cfg = miniature(retrieval_mix=0.3, retrieval_min_length=8)
  n = cfg.train_length
  row = lambda kind, plan, length, accuracy: {"kind": "short_passkey", "run_kind": kind, "plan_id": plan,
                                              "plan": plan, "length": length, "seed": 0, "run": f"{kind}_s0",
                                              "metrics": {"accuracy": accuracy, "examples": 100}}
  def rows(ape_inside):
    return [row("base", "rope", n, 1.0), row("base", "yarn_s4", n, 0.5), row("base", "rope", 2 * n, 0.0),
            row("base", "yarn_s4", 2 * n, 0.6), row("ape", "ape_pcw", n, ape_inside),
            row("ape", "ape_pcw", 2 * n, 0.2)]
  found = claims.longembed_retrieval(claims.Context(rows(0.97), cfg))
  # 0.60 - 0.20 = 0.40; half width 1.96 sqrt(0.6 * 0.4 / 100 + 0.2 * 0.8 / 100) = 0.124.
  assert found.verdict == "agrees" and found.value == pytest.approx(0.40)
  assert (found.interval.low, found.interval.high) == pytest.approx((0.276, 0.524), abs=1e-3)
  short = claims.longembed_retrieval(claims.Context(rows(0.90), cfg))
  assert short.verdict == "untestable" and "APE model 0.90, RoPE model 1.00" in short.measured


def committed_rows_and_config():
  """The committed run's rows and the config it was made with (saved beside them)."""
  cfg = study.read_study_config(os.path.join(th.REPO_ROOT, "docs"))
  rows = study.with_plan_ids(results_lib.read_rows(os.path.join(th.REPO_ROOT, "docs", "results.jsonl")))
  return rows, cfg


def test_the_committed_claims_are_recomputed_from_the_committed_rows():
  """Every claim of docs/report.md, recomputed from docs/results.jsonl with the run's config: the
  same verdict in the committed table, a source and a rule, and a verdict other than inconclusive
  or untestable only where an interval clears the rule's threshold on the rule's side."""
  rows, cfg = committed_rows_and_config()
  claims = study.evaluate_claims(rows, cfg)
  assert len(claims) == len(study.CLAIMS)
  with open(os.path.join(th.REPO_ROOT, "docs", "report.md"), encoding="utf-8") as f:
    table = [line for line in f if line.startswith("| ") and line.rstrip().endswith("** |")]
  assert len(table) == len(claims)
  for c, line in zip(claims, table):
    assert c.source and c.rule and line.startswith(f"| {c.claim} |") and f"**{c.verdict}**" in line
    if c.verdict in ("agrees", "disagrees"):
      assert c.interval is not None and c.interval.low <= c.value <= c.interval.high
      clears_below = c.interval.high < c.threshold
      clears_above = c.interval.low > c.threshold
      assert (clears_below if (c.verdict == "agrees") == c.below else clears_above), c.claim


def _pooled_statistic(rows, statistic, a, b):
  """The claim's value recomputed from the rows' metrics: mean over seeds of the per-seed statistic."""
  ppl = results_lib.select(rows, kind="perplexity", split="test")
  side = lambda crit: {r["seed"]: r["metrics"]["bits_per_byte"]
                       for r in sorted(results_lib.select(ppl, **crit), key=lambda r: r["run"], reverse=True)}
  va, vb = side(a), side(b)
  seeds = sorted(set(va) & set(vb))
  values = [va[s] - vb[s] if statistic == "difference" else va[s] / vb[s] - 1 for s in seeds]
  return sum(values) / len(values)


def test_the_report_prose_numbers_match_results_jsonl():
  """Each prose sentence's number, re-derived here from the rows by their own fields (the training
  length L, the static scale s and the fine-tuning scale a of the committed run's config), not
  through the claims module; every other sentence states the verdict the claims computed."""
  import re  # pylint: disable=g-import-not-at-top
  from rope_lab.study import report_text  # pylint: disable=g-import-not-at-top
  rows, cfg = committed_rows_and_config()
  prose = report_text.claims_prose(rows, cfg).splitlines()
  n, s, a = cfg.train_length, int(cfg.static_scale), cfg.finetune_scale
  base = lambda plan, length: dict(run_kind="base", plan_id=plan, length=length)
  ft = lambda method, length, plan="trained": dict(run_kind="finetune", method=method, train_scale=a, plan_id=plan,
                                                   length=length)
  expected = [
      ("difference", base(f"pi_s{s}", s * n), base("rope", s * n)),
      ("relative", ft("pi", a * n), ft("pi", n)),
      ("relative", ft("pi", n), base("rope", n)),
      ("relative", ft("yarn", a * n), ft("yarn", n)),
      ("relative", ft("yarn", n), base("rope", n)),
      ("relative", ft("yarn", 2 * a * n), ft("yarn", a * n)),
      ("difference", ft("pi", 2 * a * n, "pi_matched"), ft("pi", 2 * a * n)),
  ]
  for sentence, (statistic, side_a, side_b) in zip(prose, expected):
    measured = float(re.search(r"measured ([+-][0-9.]+)", sentence).group(1))
    assert measured == pytest.approx(_pooled_statistic(rows, statistic, side_a, side_b), abs=6e-4), sentence
  claims = study.evaluate_claims(rows, cfg)
  assert len(prose) == len(claims)
  for sentence, claim in zip(prose, claims):
    assert sentence.startswith(f"- {claim.claim}:") and sentence.rstrip(".").endswith(claim.verdict) or \
        f"{claim.verdict} (" in sentence, sentence
