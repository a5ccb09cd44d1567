"""LongRoPE search scoring: batched = one at a time, one compilation per stage, the experiment
end to end (progressive stages, outputs, resumption), sharding over 8 devices, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from rope_lab import config as config_lib
from rope_lab import pe
from rope_lab import search
from rope_lab.errors import ConfigError
from rope_lab.data import DataConfig, LongDocument
from rope_lab.evaluate import document_windows, encoding_hooks, eval_model_config, plan_from_json, window_nll
from rope_lab.model.skeleton import ModelConfig, init_params
from rope_lab.search import scoring
from rope_lab.search.config import SearchConfig, SearchConfigError
from tests import train_helpers as th

# A large init makes the random model's predictions depend on positions, so factors matter.
CFG = ModelConfig(vocab_size=258, d_model=32, n_layers=1, n_heads=2, mlp_dim=64, attention="dot_product",
                  init_std=0.2)
TRAIN_LENGTH = 16
DATA = DataConfig(dataset="random:", tokenizer="byte")  # validation documents of up to 2048 tokens




def make_params(seed: int = 0):
  hooks = pe.make("rope").hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=16)
  return init_params(CFG, hooks, jax.random.key(seed))


@pytest.fixture(scope="module")
def params():
  return make_params()


def space():
  return scoring.rotary_space(pe.make("rope"), CFG.head_dim)


def random_windows(length: int, docs: int = 2, seed: int = 0):
  rng = np.random.default_rng(seed)
  documents = [LongDocument(f"d{i}", rng.integers(0, 256, length + length // 2).astype(np.int32), 0)
               for i in range(docs)]
  return document_windows(documents, length, length // 2, pad_id=256)


def population(target_factor: float, size: int, seed: int = 0) -> np.ndarray:
  """Random non-decreasing factor vectors in [1, s], plus PI."""
  rng = np.random.default_rng(seed)
  factors = np.sort(rng.uniform(1.0, target_factor, size=(size - 1, space().pairs)), axis=1)
  return np.concatenate([factors, np.full((1, space().pairs), target_factor)])


def base_model(params, restore=None) -> search.BaseModel:
  return search.BaseModel(model=CFG, data=DATA, encoding=pe.make("rope"), train_length=TRAIN_LENGTH,
                              restore_params=restore or (lambda: params))


def settings(**changes) -> search.SearchRun:
  values = dict(target_length=64, max_docs=2, population=4, generations=2, mutations=2, crossovers=2,
                top_k=2, grid_step=0.25, candidates_per_call=2, seed=3)
  return search.run_from_mapping({**values, **changes})


# ----------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("length, n_hat", [(64, (0, 3, 3, 0, 3)), (512, (0,) * 5)])  # fused / chunked attention
def test_batched_perplexities_equal_one_candidate_per_call(params, length, n_hat):
  s = length / TRAIN_LENGTH
  factors, n_hat = population(s, 5), np.asarray(n_hat)
  windows = random_windows(length)
  setup = scoring.ScoringSetup(length=length, attention_factor=scoring.attention_factor_for(s, TRAIN_LENGTH),
                               near_size=int(n_hat.max()), candidates_per_call=2, chunk_size=128)
  batched = scoring.make_population_scorer(CFG, params, windows, space(), setup)(factors, n_hat)
  single = scoring.one_at_a_time_perplexities(CFG, params, windows, space(), factors, n_hat,
                                              original_length=TRAIN_LENGTH, target_factor=s, chunk_size=128)
  np.testing.assert_allclose(batched, single, rtol=1e-5)
  assert np.ptp(batched) > 1e-3 * batched.min()  # the candidates are told apart


def test_population_hooks_match_the_longrope_encoding(params):
  factors = population(4.0, 3)
  hooks = scoring.population_hooks(space(), factors, np.asarray([0, 3, 3]), length=64, near_size=3,
                                   attention_factor=scoring.attention_factor_for(4.0, TRAIN_LENGTH))
  for n, n_hat in enumerate((0, 3, 3)):
    encoding = scoring.longrope_encoding(space(), factors[n], original_length=TRAIN_LENGTH, target_factor=4.0,
                                         n_hat=n_hat)
    reference = encoding_hooks(CFG, encoding, 64)
    assert float(hooks.logit_scale[n]) == pytest.approx(float(reference.logit_scale), rel=1e-7)
    np.testing.assert_array_equal(hooks.rotary.cos_coarse[n], reference.rotary.cos_coarse)
    np.testing.assert_array_equal(hooks.rotary.sin_fine[n], reference.rotary.sin_fine)
    assert int(hooks.rotary.near_count[n]) == n_hat


def _equations(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)
      if hasattr(inner, "eqns"):
        yield from _equations(inner)


def test_layers_before_the_first_rotation_are_computed_once_per_call(params):
  setup = scoring.ScoringSetup(length=64, attention_factor=1.0, candidates_per_call=3)
  scorer = scoring.make_population_scorer(CFG, params, random_windows(64), space(), setup)
  hooks = scorer.hooks_for(population(4.0, 3), np.zeros(3, int))
  batches = scorer.batches
  closed = jax.make_jaxpr(scoring._population_program(scorer.model))(
      scorer.params, batches.inputs[0], batches.targets[0], batches.masks[0], hooks)
  products = {str(e.source_info.name_stack).split("/", 1)[-1]: e.outvars[0].aval.shape
              for e in _equations(closed.jaxpr) if e.primitive.name == "dot_general"}
  tokens = len(batches.inputs[0]) * 64
  for name in ("layers_0/attn/q", "layers_0/attn/k", "layers_0/attn/v"):
    assert products[name] == (tokens, CFG.d_model), name  # no candidate axis
  assert products["layers_0/attn/o"] == (3, tokens, CFG.d_model)  # after the rotation: one per candidate


def test_scorer_rejects_factors_of_another_shape_and_n_hat_beyond_the_near_table(params):
  setup = scoring.ScoringSetup(length=64, attention_factor=1.0, near_size=2)
  scorer = scoring.make_population_scorer(CFG, params, random_windows(64), space(), setup)
  with pytest.raises(ValueError, match="one factor per rotary pair"):
    scorer(np.ones((2, space().pairs + 1)), np.zeros(2))
  with pytest.raises(ValueError, match="near_size=2"):
    scorer(np.ones((2, space().pairs)), np.asarray([0, 3]))


# ----------------------------------------------------------------------------- the experiment


def test_progressive_search_compiles_once_per_stage_and_writes_usable_factors(params, tmp_path):
  calls = []
  traces = scoring.trace_count()
  outcome = search.run_longrope_search(
      settings(stage1_length=32, short_search=True, short_max_factor=2.0, seed=11), str(tmp_path),
      base=base_model(params), log=calls.append)
  assert scoring.trace_count() - traces == 3  # stage1 (32 tokens), long (64), short (16)
  assert outcome.stage1.generation == outcome.long.generation == outcome.short.generation == 2
  assert outcome.long.evaluated > 2 * settings().candidates_per_call  # many calls, one trace each stage
  assert max(outcome.long.factors) <= 4.0 and max(outcome.short.factors) <= 2.0

  # The factor file, applied through the ordinary evaluation path, reproduces the searched score.
  loaded = pe.load_factors(outcome.factor_file, head_dim=CFG.head_dim)
  assert loaded.long_factor == pytest.approx(outcome.long.factors)
  assert loaded.short_factor == pytest.approx(outcome.short.factors)
  documents = search.validation_documents(DATA, settings(), scoring_tokenizer())
  windows = document_windows(documents, 64, 32, pad_id=scoring_tokenizer().pad_id)
  nll = window_nll(eval_model_config(CFG, 64), params, windows, encoding_hooks(CFG, loaded, 64))
  assert np.exp(nll.loss) == pytest.approx(outcome.long.perplexity, rel=1e-5)

  spec = open(os.path.join(tmp_path, search.FACTOR_SPEC_FILE)).read()
  assert plan_from_json(spec).encoding(64, TRAIN_LENGTH).long_factor == loaded.long_factor
  rows = [json.loads(line) for line in open(os.path.join(tmp_path, "results.jsonl"))]
  assert sorted((r["stage"], r["generation"]) for r in rows) == sorted(
      (stage, g) for stage in ("stage1", "long", "short") for g in range(3))
  assert sorted(os.listdir(os.path.join(tmp_path, "figures"))) == [
      "convergence_long.png", "convergence_short.png", "convergence_stage1.png", "longrope_factors.png"]


def scoring_tokenizer():
  from rope_lab.data import get_tokenizer  # pylint: disable=g-import-not-at-top
  return get_tokenizer(DATA)


_SUMMED_NLL = scoring.PopulationScorer.summed_nll


def _recording_scorer(monkeypatch, scored: list, interrupt_at: int | None = None):
  """Records every candidate row scored; raises KeyboardInterrupt instead of call ``interrupt_at``."""
  def summed_nll(self, factors_NxP, n_hat_N):
    if interrupt_at is not None and len(scored) + 1 == interrupt_at:
      raise KeyboardInterrupt("simulated Ctrl-C")
    scored.append([tuple(np.round(row, 9)) + (int(n),) for row, n in zip(factors_NxP, n_hat_N)])
    return _SUMMED_NLL(self, factors_NxP, n_hat_N)
  monkeypatch.setattr(scoring.PopulationScorer, "summed_nll", summed_nll)


def test_an_interrupted_search_resumes_to_the_same_result_without_rescoring(params, tmp_path, monkeypatch):
  straight_calls, resumed_calls = [], []
  _recording_scorer(monkeypatch, straight_calls)
  straight = search.run_longrope_search(settings(), str(tmp_path / "straight"), base=base_model(params),
                                            log=lambda _: None)
  # Population 4 in calls 1-2, generation 1's children in calls 3-4: stop inside generation 1.
  _recording_scorer(monkeypatch, resumed_calls, interrupt_at=4)
  with pytest.raises(KeyboardInterrupt):
    search.run_longrope_search(settings(), str(tmp_path / "resumed"), base=base_model(params),
                                   log=lambda _: None)
  assert len(resumed_calls) == 3
  _recording_scorer(monkeypatch, resumed_calls)
  resumed = search.run_longrope_search(settings(), str(tmp_path / "resumed"), base=base_model(params),
                                           log=lambda _: None)
  assert resumed.long.factors == straight.long.factors
  assert resumed.long.perplexity == straight.long.perplexity
  assert resumed.long.history == straight.long.history
  rows = lambda calls: [row for call in calls for row in call]
  assert len(set(rows(resumed_calls))) == len(rows(resumed_calls))  # nothing scored twice
  assert sorted(rows(resumed_calls)) == sorted(rows(straight_calls))
  read = lambda d: json.load(open(os.path.join(tmp_path, d, "longrope_factors.json")))
  assert read("straight") == read("resumed")


def test_sigterm_becomes_keyboard_interrupt_and_the_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(KeyboardInterrupt):
    with search.sigterm_as_keyboard_interrupt():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)  # the handler raises at the next bytecode, long before this ends
  assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- bad inputs


def _must_not_restore():
  raise AssertionError("parameters were restored before the inputs were checked")


@pytest.mark.parametrize("changes, error, message", [
    (dict(target_length=8), search.SearchSetupError, r"target factor s = .* 8 / 16 = 0.5 must be > 1"),
    (dict(population=2, top_k=4), SearchConfigError, r"population \(2\) must be >= top_k \(4\)"),
    (dict(target_length=4096), search.SearchSetupError,
     r"validation documents are shorter than the target length 4096"),
    (dict(stage1_length=80), search.SearchSetupError, r"stage1_length must lie between"),
])
def test_bad_settings_fail_before_any_compute(tmp_path, changes, error, message):
  traces = scoring.trace_count()
  with pytest.raises(error, match=message):
    search.run_longrope_search(settings(**changes), str(tmp_path), base=base_model(None, _must_not_restore))
  assert scoring.trace_count() == traces


def test_a_seed_factor_file_for_another_head_dim_is_rejected_before_any_compute(tmp_path):
  other = pe.make("longrope", short_factor=[1.0] * 16, long_factor=[4.0] * 16,
                  original_max_position_embeddings=TRAIN_LENGTH, factor=4.0)
  path = str(tmp_path / "other.json")
  pe.save_factors(path, other, head_dim=32)
  with pytest.raises(pe.ConfigError, match="head_dim 32, model has 16"):
    search.run_longrope_search(settings(seed_factor_file=path), str(tmp_path / "run"),
                                   base=base_model(None, _must_not_restore))


def test_a_seed_factor_file_is_rescaled_into_the_first_stage(tmp_path):
  found = pe.make("longrope", short_factor=[1.0] * 8, long_factor=np.linspace(1, 8, 8).tolist(),
                  original_max_position_embeddings=TRAIN_LENGTH, factor=8.0)
  path = str(tmp_path / "found.json")
  pe.save_factors(path, found, head_dim=CFG.head_dim)
  stage = search.Stage("long", 64, SearchConfig(target_factor=4.0, rotary_pairs=8, original_length=16), 1.0)
  seed = search.seed_from_file(path, space(), stage, "log")
  np.testing.assert_allclose(seed, np.linspace(1, 8, 8) ** (np.log(4) / np.log(8)))  # 1 -> 1, 8 -> 4


def test_a_base_workdir_without_a_trained_model_is_named(tmp_path):
  with pytest.raises(search.SearchSetupError, match="config.base_workdir is not set"):
    search.base_model_from_workdir(None)
  with pytest.raises(search.SearchSetupError, match=r"base_workdir=.*no config.json"):
    search.base_model_from_workdir(str(tmp_path))
  with open(tmp_path / "config.json", "w") as f:  # a run that never saved a checkpoint
    json.dump(config_lib.experiment_to_dict(th.tiny_experiment()), f)
  with pytest.raises(search.SearchSetupError, match=r"base_workdir=.*no committed checkpoint"):
    search.base_model_from_workdir(str(tmp_path))


def test_the_config_file_sets_the_evolution_hyperparameters_of_every_stage():
  from configs import longrope_search as search_config  # pylint: disable=g-import-not-at-top
  run = search.run_from_mapping(search_config.get_config("quick,progressive").to_dict())
  stages = search.plan_stages(run, space(), original_length=TRAIN_LENGTH)
  assert [s.name for s in stages] == ["stage1", "long", "short"]
  for stage in stages:  # quick: population 16, 6 generations, 8 + 8 children, top 8
    assert (stage.search.population, stage.search.generations, stage.search.mutations,
            stage.search.crossovers, stage.search.top_k) == (16, 6, 8, 8, 8)
  assert stages[1].search.target_factor == 1024 / TRAIN_LENGTH and stages[2].search.seeds == ("ones", "pi")
  with pytest.raises(ConfigError, match="unknown field.*populaton"):
    search.run_from_mapping({"populaton": 3})
  with pytest.raises(ConfigError, match="config.population must be int"):
    search.run_from_mapping({"population": "many"})


def test_the_command_line_names_a_missing_base_run_and_exits_2(tmp_path):
  completed = subprocess.run(
      [th.PYTHON, "-m", "experiments.longrope_search", "--config=configs/longrope_search.py:quick",
       f"--config.base_workdir={tmp_path / 'missing'}", f"--workdir={tmp_path / 'search'}"],
      cwd=th.REPO_ROOT, env=th.subprocess_env(), capture_output=True, text=True, timeout=300)
  assert completed.returncode == 2, completed.stderr[-2000:]
  assert "config.base_workdir=" in completed.stderr and "holds no trained model" in completed.stderr
  assert not (tmp_path / "search").exists()  # nothing written before the inputs check out


# ----------------------------------------------------------------------------- 8 devices


def test_the_candidate_axis_is_split_over_8_devices_with_the_same_perplexities():
  env = th.subprocess_env()
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
  completed = subprocess.run([th.PYTHON, "-m", "tests.test_longrope_scoring"], cwd=th.REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
  assert completed.returncode == 0, completed.stderr[-3000:]
  out = json.loads(completed.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8 and out["candidates_per_call"] == 8  # 3 rounded up to the devices
  assert out["split_over_data"] and out["hooks_devices"] == 8
  np.testing.assert_allclose(out["sharded"], out["single"], rtol=1e-5)


def _sharded_worker() -> None:
  """Scores 11 candidates on all 8 devices and on one; prints a JSON line."""
  jax.config.update("jax_disable_most_optimizations", True)
  params = jax.tree.map(np.asarray, make_params())
  windows = random_windows(64)
  factors, n_hat = population(4.0, 11), np.arange(11) % 3
  setup = scoring.ScoringSetup(length=64, attention_factor=1.1, near_size=2, candidates_per_call=3)
  sharded = scoring.make_population_scorer(CFG, params, windows, space(), setup)
  single = scoring.make_population_scorer(CFG, params, windows, space(), setup, devices=jax.devices()[:1])
  hooks = sharded.hooks_for(factors[:8], n_hat[:8])
  out = {"devices": jax.device_count(), "candidates_per_call": sharded.candidates_per_call,
         "split_over_data": hooks.logit_scale.sharding.spec == PartitionSpec("data"),
         "hooks_devices": len(hooks.rotary.cos_fine.sharding.device_set),
         "sharded": sharded(factors, n_hat).tolist(), "single": single(factors, n_hat).tolist()}
  sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
  _sharded_worker()
