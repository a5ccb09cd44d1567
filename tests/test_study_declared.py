"""The study's declared runs: parsing, the experiments they build, the miniature study with every
kind of declared row, and the verdict logic of the claims that read them."""

import dataclasses
import math
import os

import numpy as np
import pytest

from rope_lab import pe
from rope_lab import results as results_lib
from rope_lab import study
from rope_lab.errors import ConfigError
from rope_lab.study import claims as claims_lib
from rope_lab.study import runs as runs_lib
from tests.test_study import miniature


# Every kind of declared row at test size (training length 16, fine-tunes at 2x = 32 tokens).
FINETUNES = (
    "pi=pi", "yarn=yarn", "power=power:factor=1:power=0.5",
    "truncated=truncated:cutoff_wavelength=16:zero_ratio=8:rho_ratio=16",
    "pose=pi | seq_len=0.5 | pose_target_length=1",
    "longlora=pi | lora_rank=4 | s2_attn_group_fraction=0.25",
)
VARIANTS = (
    "xpos=xpos", "nope4=per_layer:layer_pattern=NLLL",  # one layer: the NoPE letter is the one used
    "icp_random=rope | data.packing=concat | data.ordering=random",
    "icp_in_context=rope | data.packing=concat | data.ordering=in_context",
)


@pytest.mark.parametrize("changes, message", [
    (dict(finetunes=("pi=pi", "yarn=yarn:fctor=2")), r"config\.finetunes\[1\]: entry 'yarn=yarn:fctor=2': "
     r"encoding 'yarn' has no parameter 'fctor'"),
    (dict(finetunes=("pi=pi", "ll=pi | lora_rnk=8")), r"config\.finetunes\[1\]: entry 'll=pi \| lora_rnk=8': "
     r"override 'lora_rnk': TrainConfig has no field"),
    (dict(finetunes=("pi=pi", "x=alibi2")), r"config\.finetunes\[1\].*encoding 'alibi2' is not registered"),
    (dict(finetunes=("pi=pi", "pi=pi:factor=3")), r"config\.finetunes: labels must be distinct; repeated: \['pi'\]"),
    (dict(finetunes=("pi=pi", "pose=pi | seq_len=0.5 | pose_target_length=0.25")),
     r"config\.finetunes: entry 'pose=pi \| seq_len=0\.5 \| pose_target_length=0\.25': config\.pose_target_length "
     r"must be 0 \(off\) or >= seq_len=16, got 8"),
    (dict(pretrain_variants=("icp=rope | data.ordering=in_context",)),
     r"config\.pretrain_variants: entry 'icp=rope \| data\.ordering=in_context': .*packing"),
    (dict(pretrain_variants=("base=xpos",)), r"config\.pretrain_variants.*other than base"),
    (dict(pretrain_variants=("x y=xpos",)), r"config\.pretrain_variants\[0\].*label 'x y'"),
    (dict(grid_finetune="truncated"), r"config\.grid_finetune.*a label of finetunes"),
    (dict(ape_model="rope"), r"config\.ape_model must be an absolute-position table"),
    (dict(ape_model="sinusoidal | model.embedding_multiplier=0"),
     r"config\.ape_model: entry 'sinusoidal \| model\.embedding_multiplier=0'.*embedding_multiplier"),
    (dict(finetunes=("pi=pi", "power=power | seeds=0")), r"config\.finetunes\[1\]: entry 'power=power \| seeds=0': "
     r"seeds='0' must be an int >= 1"),
])
def test_bad_declarations_name_the_field_and_the_entry(changes, message):
  with pytest.raises(ConfigError, match=message):
    miniature(**changes)


def test_declared_pi_and_yarn_fine_tunes_are_the_experiments_the_study_built_before():
  """The experiments as the study built them for method == "pi" / "yarn" before runs were declared
  (that code, pasted here), equal to what the declarations "pi=pi" and "yarn=yarn" build."""
  cfg = miniature(finetune_scale=4, seeds=(0, 1))
  for method in ("pi", "yarn"):
    for seed, scale, lr in ((0, 4, 1e-2), (1, 2, 3e-3)):
      base = cfg.base_frequency
      encoding = (pe.make("pi", base=base, factor=float(scale)) if method == "pi" else
                  pe.make("yarn", base=base, factor=float(scale), original_max_position_embeddings=cfg.train_length))
      rows = max(1, cfg.base.train.global_batch_size // scale)
      exp = dataclasses.replace(cfg.base, encoding=encoding)
      exp = dataclasses.replace(exp, train=dataclasses.replace(
          exp.train, seed=seed, seq_len=cfg.train_length * scale, global_batch_size=rows, steps=cfg.finetune_steps,
          learning_rate=lr, lr_schedule="constant", warmup_steps=cfg.finetune_warmup_steps, weight_decay=0.0,
          init_from="/runs/base", eval_every=0, checkpoint_every=0))
      spec = runs_lib.finetune_run(cfg, seed, method, scale, lr, "/runs/base")
      assert spec.exp == exp
      assert spec.name == f"ft_{method}{scale}_lr{lr:g}_s{seed}"
      assert (spec.kind, spec.method, spec.train_scale) == ("finetune", method, scale)


def test_seeds_override_trains_an_entry_for_the_first_seeds_only():
  cfg = miniature(seeds=(3, 5, 7), finetunes=("pi=pi", "power=power:factor=1 | seeds=1"),
                  pretrain_variants=("xpos=xpos | seeds=2", "nope4=per_layer:layer_pattern=NLLL"))
  names = {s.name for s in runs_lib.declared_runs(cfg, "/runs")}
  assert {n for n in names if n.startswith("ft_pi")} == {f"ft_pi2_lr0.01_s{s}" for s in (3, 5, 7)}
  assert {n for n in names if n.startswith("ft_power")} == {"ft_power2_lr0.01_s3"}
  assert {n for n in names if n.startswith(("xpos", "nope4"))} == {"xpos_s3", "xpos_s5", "nope4_s3"}


def test_declared_lengths_overrides_and_filled_parameters():
  cfg = miniature(finetunes=FINETUNES, pretrain_variants=VARIANTS)
  specs = {s.name: s for s in runs_lib.declared_runs(cfg, "/runs")}
  pose = specs["ft_pose2_lr0.01_s0"].exp
  # PoSE: rows of the training length (16) whose positions span the fine-tune length (32), the
  # base run's tokens per step (8 rows of 16), PI with the fine-tune's factor filled in.
  assert (pose.train.seq_len, pose.train.pose_target_length, pose.train.global_batch_size) == (16, 32, 8)
  assert pose.encoding == pe.make("pi", base=cfg.base_frequency, factor=2.0)
  longlora = specs["ft_longlora2_lr0.01_s0"].exp.train
  assert (longlora.seq_len, longlora.global_batch_size, longlora.lora_rank, longlora.s2_attn_group_size) == (32, 4, 4, 8)
  power = specs["ft_power2_lr0.01_s0"].exp.encoding  # the entry's factor wins over the filled one
  assert (power.name, power.factor, power.power) == ("power", 1.0, 0.5)
  assert specs["ft_truncated2_lr0.01_s0"].exp.encoding.factor == 2.0
  icp = specs["icp_in_context_s0"]
  assert (icp.kind, icp.method, icp.exp.data.packing, icp.exp.data.ordering) == ("variant", "icp_in_context",
                                                                                 "concat", "in_context")
  assert icp.exp.train == cfg.base.train and icp.exp.encoding == cfg.base.encoding
  assert specs["xpos_s0"].exp.encoding.name == "xpos" and specs["xpos_s0"].exp.train.seq_len == 16
  # Only the grid's declared fine-tune is also evaluated with its factor matched to the window.
  assert [s.method for s in specs.values() if s.matched_eval] == ["pi"]


def test_a_variant_that_tokenizes_differently_is_refused_before_training(tmp_path):
  cfg = miniature(ape=False, pretrain_variants=("other=rope | data.dataset=kjv | data.tokenizer=bpe | "
                                                "data.vocab_size=512",))
  with pytest.raises(ConfigError, match="'other_s0'.*tokenizes differently"):
    study.Study(cfg, str(tmp_path))
  assert not (tmp_path / "runs").exists()


def test_every_declared_row_reaches_results_figures_and_report(tmp_path):
  # One entry per path through the study (compiles dominate the time): the power basis takes the
  # truncated basis's path, NoPE-every-4th xPos's (an encoding other than the base model's).
  finetunes = tuple(f for f in FINETUNES if not f.startswith("power="))
  variants = tuple(v for v in VARIANTS if not v.startswith("nope4="))
  cfg = miniature(finetunes=finetunes, pretrain_variants=variants, ape=False, grid_train_scales=(), eval_scales=(1, 2, 4),
                  passkey_lengths=(), lines_lengths=(), attention_scales=(1,), ngram_train_bytes=2000,
                  eval_doc_tokens=352)  # 10 windows at 4x: enough units for an interval
  workdir = str(tmp_path / "study")
  report = open(study.run_study(cfg, workdir, log=lambda m: None)).read()
  rows = results_lib.read_rows(os.path.join(workdir, "results.jsonl"))
  trained = {r["run"] for r in results_lib.select(rows, kind="train")}
  labels = [r.label for r in cfg.finetunes]
  variants = [r.label for r in cfg.pretrain_variants]
  assert trained == {"base_s0"} | {f"ft_{label}2_lr0.01_s0" for label in labels} | {f"{v}_s0" for v in variants}
  ppl = results_lib.select(rows, kind="perplexity", plan_id="trained")
  for label in labels:
    assert {r["length"] for r in results_lib.select(ppl, run_kind="finetune", method=label)} == {16, 32, 64}, label
  for label in variants:
    assert {r["length"] for r in results_lib.select(ppl, run_kind="variant", method=label)} == {16, 32, 64}, label
  (pose_train,) = results_lib.select(rows, kind="train", run="ft_pose2_lr0.01_s0")
  assert pose_train["train_length"] == 16  # trained on rows of the training length
  figures = os.listdir(os.path.join(workdir, "figures"))
  assert "perplexity_variants.png" in figures and "perplexity_finetuned.png" in figures
  assert "![perplexity_variants.png](figures/perplexity_variants.png)" in report
  for label in labels:
    assert f"| {label} fine-tuned at 2x | 1 |" in report, label
  for run in cfg.pretrain_variants:
    assert f"| {run.label} (pretrained): `{run.spec.replace('|', '/')}` | 1 |" in report, run.label  # cells escape |
  # The claims on declared rows are measured (with intervals), not left untestable.
  by_name = {rule.__name__: rule(claims_lib.Context(rows, cfg)) for rule in claims_lib.CLAIMS}
  for name in ("giraffe_truncated_extrapolates", "pose_matches_full_finetune", "longlora_matches_full_finetune",
               "xpos_extrapolates_beyond_rope", "in_context_order_lowers_perplexity"):
    found = by_name[name]
    assert found.verdict in ("agrees", "disagrees", "inconclusive") and found.interval is not None, name
    assert f"**{found.verdict}**" in report and found.claim in report


# ----------------------------------------------------------------------------- claims on synthetic rows


def _row(run_kind, method, plan_id, length, seed, nll):
  """A perplexity row over 64 windows of one document, 10 bytes each, with these per-window nats."""
  nll = [float(v) for v in nll]
  return {"kind": "perplexity", "split": "test", "length": length, "seed": seed, "run": f"{method}_s{seed}",
          "run_kind": run_kind, "method": method, "plan_id": plan_id, "plan": plan_id,
          "metrics": {"bits_per_byte": sum(nll) / (math.log(2) * 10 * len(nll))},
          "windows": {"doc": [0] * len(nll), "start": list(range(0, 8 * len(nll), 8)), "nll": nll,
                      "bytes": [10] * len(nll)}}


@pytest.mark.parametrize("shift, verdict", [(-2.0, "agrees"), (2.0, "disagrees"), (0.0, "inconclusive")])
def test_variant_claim_verdicts_on_synthetic_rows(shift, verdict):
  """xPos vs RoPE at 2x L on rows built by hand: 2 nats per window lower (0.29 bits/byte) is wholly
  below 0, 2 higher wholly above, equal on average with noise straddles 0."""
  cfg = miniature(pretrain_variants=("xpos=xpos",))
  rng = np.random.default_rng(0)
  rope = 60 + rng.normal(0, 1, size=64)
  xpos = rope + shift + rng.normal(0, 1, size=64)
  rows = [_row("base", None, "rope", 32, 0, rope), _row("variant", "xpos", "trained", 32, 0, xpos)]
  found = claims_lib.xpos_extrapolates_beyond_rope(claims_lib.Context(rows, cfg))
  assert found.verdict == verdict
  assert found.value == pytest.approx(np.sum(xpos - rope) / (math.log(2) * 640))
  assert found.interval.low <= found.value <= found.interval.high


def test_within_claims_use_their_threshold_and_rows_without_windows_are_inconclusive():
  cfg = miniature(finetunes=FINETUNES)
  rng = np.random.default_rng(1)
  full = 60 + rng.normal(0, 0.2, size=64)
  near = full * 1.02  # 2% worse: inside the 5% the rule allows
  far = full * 1.10  # 10% worse
  rows = [_row("finetune", "pi", "trained", 32, 0, full), _row("finetune", "pose", "trained", 32, 0, near),
          _row("finetune", "longlora", "trained", 32, 0, far)]
  for row in rows:
    row["train_scale"] = 2
  context = claims_lib.Context(rows, cfg)
  pose = claims_lib.pose_matches_full_finetune(context)
  longlora = claims_lib.longlora_matches_full_finetune(context)
  assert (pose.verdict, pose.threshold, pose.value) == ("agrees", 0.05, pytest.approx(0.02))
  assert (longlora.verdict, longlora.value) == ("disagrees", pytest.approx(0.10))
  for row in rows:
    row["windows"] = None
  bare = claims_lib.pose_matches_full_finetune(claims_lib.Context(rows, cfg))
  assert bare.verdict == "inconclusive" and bare.interval is None and "no interval" in bare.measured
  # Undeclared runs: no rows, so the claim says it cannot be tested.
  assert claims_lib.in_context_order_lowers_perplexity(context).verdict == "untestable"


def test_study_config_json_round_trips_and_older_files_read_as_declarations(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  ape_model = "sinusoidal | model.embedding_multiplier=4.0"
  cfg = miniature(finetunes=FINETUNES, pretrain_variants=VARIANTS, ape_model=ape_model)
  study.save_config(cfg, str(tmp_path))
  path = os.path.join(str(tmp_path), study.config.CONFIG_FILE)
  with open(path) as f:
    values = json.load(f)
  assert values["finetunes"] == list(FINETUNES) and values["pretrain_variants"] == list(VARIANTS)
  assert values["ape_model"] == ape_model
  assert study.read_study_config(str(tmp_path)) == cfg
  # A study directory written before runs were declared: PI / YaRN by method name and an xPos flag.
  values.pop("pretrain_variants")
  values.pop("finetunes")
  values.pop("ape_model")  # a learned table then
  values.update(finetune_methods=["pi", "yarn"], xpos=True)
  with open(path, "w") as f:
    json.dump(values, f)
  assert study.read_study_config(str(tmp_path)) == miniature(pretrain_variants=("xpos=xpos",))
