"""LongRoPE inside the study: the search phase, its plan on every seed, resuming, and its claim."""

import dataclasses
import math
import os

import numpy as np
import pytest

from rope_lab import results as results_lib
from rope_lab import search as search_lib
from rope_lab.errors import ConfigError
from rope_lab.study import claims as claims_lib
from rope_lab.study import longrope, phases
from rope_lab.study.measurements import Study
from rope_lab.study.runs import base_run
from tests.test_study import miniature


SMALL_SEARCH = dict(longrope_population=4, longrope_generations=1, longrope_mutations=2, longrope_crossovers=2,
                    longrope_top_k=2, longrope_docs=1)


def test_search_phase_records_its_row_and_the_plan_is_scored_on_every_seed(tmp_path, monkeypatch):
  cfg = miniature(seeds=(0, 1), ape=False, grid_train_scales=(), **SMALL_SEARCH)
  workdir = str(tmp_path / "study")
  splits_read = []
  real_long_documents = search_lib.runner.long_documents

  def spy(*args, **kwargs):  # every split the search reads documents from
    splits_read.append(kwargs.get("split"))
    return real_long_documents(*args, **kwargs)

  monkeypatch.setattr(search_lib.runner, "long_documents", spy)
  runner = Study(cfg, workdir, log=lambda message: None)
  for seed in cfg.seeds:
    runner.train(base_run(cfg, seed))
  longrope.search(runner)
  assert splits_read == ["validation"]  # never the test split the report scores

  rows = results_lib.read_rows(os.path.join(workdir, "results.jsonl"))
  (found,) = results_lib.select(rows, kind="longrope_search")
  assert found["run"] == "base_s0" and found["split"] == "validation" and found["length"] == 32
  # 4 seeds of the first population (PI, NTK, YaRN and a random one) and 2 + 2 children in one generation.
  assert found["metrics"]["candidates"] == 8 and found["metrics"]["generations"] == 1
  assert math.isfinite(found["metrics"]["perplexity"]) and found["metrics"]["perplexity"] > 1
  assert all(1.0 <= f <= 2.0 for f in found["factors"])  # every factor in [1, s]

  phases.evaluate_perplexity(runner, extra=[], finetunes=[])
  rows = results_lib.read_rows(os.path.join(workdir, "results.jsonl"))
  ppl = results_lib.select(rows, kind="perplexity", plan_id="longrope_s2")
  assert {(r["seed"], r["length"]) for r in ppl} == {(s, n) for s in (0, 1) for n in (16, 32)}
  assert all(r["plan"] == "LongRoPE s=2" and r["split"] == "test" and r["windows"]["nll"] for r in ppl)
  # The windows are the same as every other zero-shot plan's, so the claim pairs them.
  yarn = {r["seed"]: r for r in results_lib.select(rows, kind="perplexity", plan_id="yarn_s2", length=32)}
  for r in results_lib.select(ppl, length=32):
    assert r["windows"]["start"] == yarn[r["seed"]]["windows"]["start"]
  assert r["encoding"]["name"] == "longrope" and r["encoding"]["long_factor"] == pytest.approx(found["factors"])
  # At s x L the searched factors are applied; evaluating them scores something other than YaRN.
  verdict = claims_lib.evaluate_claims(rows, cfg)
  (claim,) = [c for c in verdict if c.claim.startswith("LongRoPE")]
  assert claim.interval is not None and claim.verdict in ("agrees", "disagrees", "inconclusive")

  # A re-run of the study does not search again: the recorded row is enough.
  def no_search(*args, **kwargs):
    raise AssertionError("searched again")

  monkeypatch.setattr(longrope, "run_longrope_search", no_search)
  rerun = Study(cfg, workdir, log=lambda message: None)
  longrope.search(rerun)
  assert len(results_lib.read_rows(os.path.join(workdir, "results.jsonl"))) == len(rows)
  assert [p.id for p in longrope.plans(rerun)] == ["longrope_s2"]

  # More generations continue the same search in the same directory: 8 + 4 candidates in all.
  monkeypatch.undo()
  longer = dataclasses.replace(cfg, longrope_generations=2)
  longrope.search(Study(longer, workdir, log=lambda message: None))
  first, second = results_lib.select(results_lib.read_rows(os.path.join(workdir, "results.jsonl")),
                                     kind="longrope_search")
  assert second["metrics"]["candidates"] == 12 and second["metrics"]["generations"] == 2
  assert len(os.listdir(os.path.join(workdir, "longrope"))) == 1


def test_search_off_adds_no_phase_work_and_no_plan(tmp_path):
  cfg = miniature(longrope_search=False)
  runner = Study(cfg, str(tmp_path), log=lambda message: None)
  longrope.search(runner)  # no base model trained: would fail if it searched
  assert longrope.plans(runner) == []


@pytest.mark.parametrize("changes, field", [
    (dict(choice_split="train"), "choice_split"),
    (dict(longrope_population=2, longrope_top_k=4), "longrope_population"),
    (dict(longrope_docs=0), "longrope_docs"),
])
def test_bad_search_settings_name_their_field(changes, field):
  with pytest.raises(ConfigError, match=field):
    miniature(**changes)


def _row(plan_id, seed, nll, length=32):
  n = len(nll)
  return {"kind": "perplexity", "split": "test", "run_kind": "base", "run": f"base_s{seed}", "seed": seed,
          "plan_id": plan_id, "plan": plan_id, "length": length, "method": None, "train_scale": 1,
          "metrics": {"bits_per_byte": float(np.sum(nll) / np.log(2) / n)},
          "windows": {"doc": [0] * n, "start": list(range(0, 8 * n, 8)), "nll": list(nll), "bytes": [1] * n}}


def _claim(rows):
  (claim,) = [c for c in claims_lib.evaluate_claims(rows, miniature()) if c.claim.startswith("LongRoPE")]
  return claim


def test_claim_verdict_follows_the_interval_of_the_paired_difference():
  rng = np.random.default_rng(0)
  rows_by_case = {}
  for case, shift in (("better", -0.3), ("worse", 0.3), ("same", 0.0)):
    rows = []
    for seed in (0, 1):
      yarn = rng.gamma(4.0, 0.5, size=64)  # window losses vary a lot; the shift is paired
      noise = rng.normal(0, 0.01, size=64) if shift else np.zeros(64)
      rows += [_row("yarn_s2", seed, yarn), _row("longrope_s2", seed, yarn + shift + noise)]
    rows_by_case[case] = rows
  better, worse, same = (_claim(rows_by_case[k]) for k in ("better", "worse", "same"))
  assert better.verdict == "agrees" and better.interval.high < 0
  assert better.value == pytest.approx(-0.3 / np.log(2), abs=0.01)  # nats -> bits per byte
  assert worse.verdict == "disagrees" and worse.interval.low > 0
  assert same.verdict == "inconclusive" and same.value == 0.0
  assert "Ding et al. 2024" in better.source and "Table 2" in better.source
  assert _claim([r for r in rows_by_case["better"] if r["plan_id"] == "yarn_s2"]).verdict == "untestable"
