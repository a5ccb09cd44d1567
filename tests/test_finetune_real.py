"""configs/finetune_real.py:size=ci fine-tunes SmolLM2's first two blocks from its GGUF file;
the run exports to a directory transformers loads with the fine-tuned model's logits."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from rope_lab import config as config_lib
from rope_lab.data import assets
from rope_lab.data.tokenizers import HFTokenizer
from rope_lab.evaluate import runs
from rope_lab.interop import export as export_lib
from rope_lab.interop import gguf as gguf_io
from rope_lab.interop import hf
from rope_lab.training import loop as train
from tests.train_helpers import load_config_file

LENGTH = 512  # twice the fine-tune's rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  config = load_config_file("configs/finetune_real.py", "size=ci")
  workdir = str(tmp_path_factory.mktemp("ft") / "run")
  result = train.run(config_lib.experiment_from_config_dict(config), workdir)
  assert result.status == "completed" and result.step == config.steps
  return workdir


@pytest.fixture(scope="module")
def text_ids():
  essays = assets.paul_graham_essays()
  ids = HFTokenizer("gguf:" + assets.smollm2_gguf()).encode(essays["addiction"] + essays["aord"])
  return np.asarray(ids[:LENGTH], np.int32)[None]


def test_the_config_states_the_models_own_rope_settings():
  module_config = load_config_file("configs/finetune_real.py", "size=ci")
  file = gguf_io.hf_config(gguf_io.read_file(assets.smollm2_gguf()))
  assert module_config.pe.base == file["rope_parameters"]["rope_theta"]
  assert module_config.pe.original_max_position_embeddings == file["max_position_embeddings"]
  assert module_config.pe.name == "yarn" and module_config.pe.factor == 4.0


def test_ci_run_fine_tunes_the_truncated_checkpoint_with_its_own_tokenizer(run_dir):
  run = runs.load_run(run_dir)
  assert run.model.n_layers == 2 and run.model.vocab_size == 49152 and run.model.tied_embeddings
  spec = json.load(open(os.path.join(run_dir, "tokenizer_spec.json")))
  assert spec["kind"] == "hf" and spec["source"] == "gguf:" + assets.smollm2_gguf()
  base = gguf_io.load(assets.smollm2_gguf(), n_layers=2)
  q = lambda params: np.asarray(params["layers_0"]["attn"]["q"]["kernel"])
  assert np.abs(q(run.params) - q(base.params)).max() > 1e-5  # the merged adapters moved q


def test_export_round_trip_matches_the_fine_tuned_model(run_dir, tmp_path, text_ids):
  run = runs.load_run(run_dir)
  ours = np.asarray(hf.HFModel(run.model, run.params, run.encoding, {}).logits(text_ids))
  out = export_lib.export(run_dir, str(tmp_path / "hf"))
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["rope_parameters"] == {"rope_theta": 100000.0, "rope_type": "yarn", "factor": 4.0,
                                       "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True,
                                       "original_max_position_embeddings": 8192}
  assert config["max_position_embeddings"] == 32768 and config["num_hidden_layers"] == 2
  torch.set_num_threads(1)
  # The truncated model's logits reach |76|, where float32 rounding alone gives ~1e-4: ours
  # differ from transformers run in float64 by as much as from its float32 run (1.1e-4 and
  # 1.3e-4 when measured). So the bound is 16 float32 ulps of the largest logit.
  for dtype in (torch.float32, torch.float64):
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
    with torch.no_grad():
      theirs = model(torch.as_tensor(text_ids, dtype=torch.long)).logits.double().numpy()
    tolerance = 16 * np.finfo(np.float32).eps * np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= tolerance, (dtype, np.abs(ours - theirs).max(), tolerance)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  text = assets.paul_graham_essays()["addiction"][:2000]
  assert tokenizer(text)["input_ids"] == HFTokenizer("gguf:" + assets.smollm2_gguf()).encode(text)
  assert tokenizer.eos_token_id == gguf_io.special_token_id(assets.smollm2_gguf(), "eos")

  path = export_lib.export(run_dir, str(tmp_path / "gguf"), format="gguf")
  back = gguf_io.load(path)
  assert back.encoding == run.encoding
  assert np.abs(np.asarray(back.logits(text_ids)) - ours).max() <= 1e-5  # the same weights and program
