"""Mistral / Qwen2 sliding-window attention against transformers (CPU torch, eager attention)."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from rope_lab import pe
from rope_lab.interop import hf
from rope_lab.model.skeleton import ModelConfig, ModelConfigError


WINDOW = 8
LENGTH = 29  # several windows, not a multiple of the chunk


def tiny(tmp_path, config_cls, model_cls, name, **extra):
  config = config_cls(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      attn_implementation="eager", **extra)
  torch.manual_seed(0)
  model = model_cls(config).eval()
  out = str(tmp_path / name)
  model.save_pretrained(out)
  return model, out


def torch_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
  return tiny(tmp_path_factory.mktemp("mistral"), transformers.MistralConfig, transformers.MistralForCausalLM,
              "mistral", sliding_window=WINDOW)


TOKENS = np.random.default_rng(0).integers(0, 96, size=(2, LENGTH), dtype=np.int32)


@pytest.mark.parametrize("attention", ["reference", "dot_product", "chunked"])
def test_mistral_beyond_its_window_matches_transformers(mistral, attention):
  model, path = mistral
  ours = hf.load(path, attention=attention, chunk_size=8)
  assert ours.config.sliding_window == WINDOW
  expected = torch_logits(model, TOKENS)
  assert np.abs(np.asarray(ours.logits(TOKENS)) - expected).max() <= 1e-4
  # The window matters here: full attention gives other logits beyond it.
  full = hf.load(path, attention=attention, sliding_window=None)
  assert np.abs(np.asarray(full.logits(TOKENS)) - expected)[:, WINDOW:].max() > 1e-3


def test_qwen2_window_on_every_layer_matches_transformers(tmp_path):
  model, path = tiny(tmp_path, transformers.Qwen2Config, transformers.Qwen2ForCausalLM, "qwen2",
                     use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0)
  ours = hf.load(path)
  assert ours.config.sliding_window == WINDOW
  assert np.abs(np.asarray(ours.logits(TOKENS)) - torch_logits(model, TOKENS)).max() <= 1e-4


def test_qwen2_window_on_some_layers_is_refused_beyond_it(tmp_path):
  _, path = tiny(tmp_path, transformers.Qwen2Config, transformers.Qwen2ForCausalLM, "qwen2",
                 use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
  ours = hf.load(path)
  assert ours.config.sliding_window is None
  ours.logits(TOKENS[:, :WINDOW])  # inside the window every layer agrees
  with pytest.raises(ValueError, match="some layers only"):
    ours.logits(TOKENS)


def test_export_writes_the_window_back(mistral, tmp_path):
  model, path = mistral
  ours = hf.load(path)
  out = str(tmp_path / "export")
  hf.save_pretrained(out, ours.config, ours.params, ours.encoding, max_position_embeddings=64)
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert config["model_type"] == "mistral" and config["sliding_window"] == WINDOW
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  assert np.abs(torch_logits(reloaded, TOKENS) - torch_logits(model, TOKENS)).max() <= 1e-4


def test_sliding_window_must_be_a_positive_int():
  with pytest.raises(ModelConfigError, match="sliding_window"):
    ModelConfig(sliding_window=0)


def test_sliding_window_intersects_an_encoding_key_window():
  enc = pe.make("streaming_llm", sinks=2, window=10)
  hooks = enc.hooks(head_dim=16, n_heads=4, d_model=64, seq_len=32)
  from rope_lab.pe import apply as pe_apply
  narrowed = pe_apply.with_sliding_window(hooks, 4)
  assert int(narrowed.key_window.size) == 4 and int(narrowed.key_window.sinks) == 2
  assert int(pe_apply.with_sliding_window(hooks, 64).key_window.size) == 11
