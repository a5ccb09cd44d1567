"""Tiny random transformers checkpoints load into the skeleton with the same logits."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from rope_lab import pe
from rope_lab.interop import hf
from rope_lab.interop.hf_rope import HFConfigError


ORIGINAL = 32
PAIRS = 8  # head_dim 16
ROPE_TYPES = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "longrope": {"rope_type": "longrope", "short_factor": list(np.linspace(1.0, 1.3, PAIRS)),
                 "long_factor": list(np.linspace(1.0, 6.0, PAIRS)), "original_max_position_embeddings": ORIGINAL,
                 "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": ORIGINAL},
}
ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {"use_sliding_window": False}),
}
LENGTHS = (24, 80)  # inside and beyond the original context


def save_tiny(tmp_path, arch, rope, tied=False):
  config_cls, model_cls, extra = ARCHS[arch]
  max_position = ORIGINAL if rope["rope_type"] in ("default", "dynamic") else ORIGINAL * 4
  config = config_cls(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=max_position,
                      rms_norm_eps=1e-5, tie_word_embeddings=tied, rope_parameters={**rope, "rope_theta": 10000.0},
                      attn_implementation="eager", **extra)
  torch.manual_seed(0)
  model = model_cls(config).eval()
  out = str(tmp_path / f"{arch}_{rope['rope_type']}")
  model.save_pretrained(out)
  return model, out


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("rope_type", sorted(ROPE_TYPES))
def test_logits_match_transformers(tmp_path, arch, rope_type):
  model, path = save_tiny(tmp_path, arch, ROPE_TYPES[rope_type])
  ours = hf.load(path)
  rng = np.random.default_rng(0)
  for length in LENGTHS:  # short then long: transformers' dynamic types grow with the length
    tokens = rng.integers(0, 96, size=(2, length), dtype=np.int32)
    diff = np.abs(np.asarray(ours.logits(tokens)) - hf_logits(model, tokens)).max()
    assert diff <= 1e-4, (arch, rope_type, length, diff)


def test_tied_embeddings_and_sharded_checkpoint(tmp_path):
  model, path = save_tiny(tmp_path, "llama", ROPE_TYPES["yarn"], tied=True)
  sharded = str(tmp_path / "sharded")
  model.save_pretrained(sharded, max_shard_size="40KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  ours = hf.load(sharded)
  assert ours.config.tied_embeddings and "lm_head" not in ours.params
  tokens = np.random.default_rng(1).integers(0, 96, size=(1, 40), dtype=np.int32)
  assert np.abs(np.asarray(ours.logits(tokens)) - hf_logits(model, tokens)).max() <= 1e-4


def test_swapping_the_encoding_equals_transformers_with_that_rope(tmp_path):
  """Apply YaRN s=4 to a checkpoint saved with plain RoPE: equals transformers saved with YaRN."""
  _, plain_path = save_tiny(tmp_path, "llama", ROPE_TYPES["default"])
  yarn_model, _ = save_tiny(tmp_path, "llama", ROPE_TYPES["yarn"])
  yarn = pe.make("yarn", factor=4.0, original_max_position_embeddings=ORIGINAL)
  ours = hf.load(plain_path).with_encoding(yarn)
  tokens = np.random.default_rng(2).integers(0, 96, size=(1, 80), dtype=np.int32)
  assert np.abs(np.asarray(ours.logits(tokens)) - hf_logits(yarn_model, tokens)).max() <= 1e-4


@pytest.mark.parametrize("rope_type", ["default", "yarn", "llama3"])
def test_export_round_trip(tmp_path, rope_type):
  _, path = save_tiny(tmp_path, "llama", ROPE_TYPES[rope_type])
  ours = hf.load(path)
  out = str(tmp_path / "exported")
  hf.save_pretrained(out, ours.config, ours.params, ours.encoding,
                     max_position_embeddings=ours.hf_config["max_position_embeddings"])
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  tokens = np.random.default_rng(3).integers(0, 96, size=(2, 60), dtype=np.int32)
  assert np.abs(np.asarray(ours.logits(tokens)) - hf_logits(reloaded, tokens)).max() <= 1e-4


def test_malformed_checkpoints_name_the_problem(tmp_path):
  from safetensors.numpy import load_file, save_file

  _, path = save_tiny(tmp_path, "llama", ROPE_TYPES["default"])
  weights = load_file(os.path.join(path, "model.safetensors"))
  config = json.load(open(os.path.join(path, "config.json")))

  missing = dict(weights)
  del missing["model.layers.1.mlp.up_proj.weight"]
  save_file(missing, os.path.join(path, "model.safetensors"))
  with pytest.raises(hf.HFCheckpointError, match="missing weight.*model.layers.1.mlp.up_proj.weight"):
    hf.load(path)

  wrong = dict(weights)
  wrong["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
  save_file(wrong, os.path.join(path, "model.safetensors"))
  with pytest.raises(hf.HFCheckpointError, match="weight model.layers.0.self_attn.k_proj.weight: shape"):
    hf.load(path)

  save_file(weights, os.path.join(path, "model.safetensors"))
  for field, value, needle in [("model_type", "gpt2", "field 'model_type' is 'gpt2'"),
                               ("rope_parameters", {"rope_type": "su", "rope_theta": 1e4}, "'rope_type' is 'su'")]:
    json.dump(dict(config, **{field: value}), open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(HFConfigError, match=needle):
      hf.load(path)
  with pytest.raises(hf.HFCheckpointError, match="no config.json"):
    hf.load(str(tmp_path / "nowhere"))


def test_runner_fine_tunes_from_a_hugging_face_directory(tmp_path):
  """--config.init_from=hf:<dir>: the checkpoint fixes the architecture and the starting weights."""
  from tests.train_helpers import saved_params, tiny_experiment
  from rope_lab.training import loop as train

  config = transformers.LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                    max_position_embeddings=16, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 10000.0})
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config)
  model_dir = str(tmp_path / "hf_llama")
  model.save_pretrained(model_dir)
  # config.model says width 64 and untied; the checkpoint's config.json wins.
  exp = train.with_checkpoint_architecture(
      tiny_experiment(init_from="hf:" + model_dir, steps=1, model__d_model=64, model__n_heads=2))
  assert (exp.model.d_model, exp.model.n_heads, exp.model.head_dim) == (32, 4, 8)
  workdir = str(tmp_path / "run")
  result = train.run(exp, workdir)
  assert result.step == 1
  params = saved_params(workdir, 1)
  embed = [v for k, v in params.items() if "embed" in k][0]
  # The first step runs at learning rate 0 (linear warmup), so the saved weights are the checkpoint's.
  np.testing.assert_allclose(embed, model.model.embed_tokens.weight.detach().numpy(), atol=1e-7)
  with pytest.raises(hf.HFCheckpointError, match="no config.json"):
    train.with_checkpoint_architecture(tiny_experiment(init_from="hf:" + str(tmp_path / "nowhere")))


def test_unused_tensors_are_an_error_unless_not_strict(tmp_path):
  """An extra layer or an lm_head next to tied embeddings was silently dropped before."""
  from safetensors.numpy import load_file, save_file

  _, path = save_tiny(tmp_path, "llama", ROPE_TYPES["default"], tied=True)
  weights = load_file(os.path.join(path, "model.safetensors"))
  assert "lm_head.weight" not in weights
  extra = dict(weights)
  extra["lm_head.weight"] = np.ones((96, 64), np.float32)
  extra["model.layers.2.mlp.up_proj.weight"] = np.ones((128, 64), np.float32)
  save_file(extra, os.path.join(path, "model.safetensors"))
  with pytest.raises(hf.HFCheckpointError, match="2 tensor.*not used.*lm_head.weight.*model.layers.2"):
    hf.load(path)
  with pytest.warns(UserWarning, match="not used by the model"):
    loaded = hf.load(path, strict=False)
  assert "lm_head" not in loaded.params
