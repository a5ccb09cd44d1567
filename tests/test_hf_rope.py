"""Hugging Face rope settings translate to encodings that compute what transformers computes."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

from rope_lab.interop.hf_rope import HFConfigError, encoding_from_hf, encoding_to_hf

HEAD_DIM = 64
SHORT = list(np.linspace(1.0, 1.5, HEAD_DIM // 2))
LONG = list(np.linspace(1.0, 8.0, HEAD_DIM // 2))

ROPE_SETTINGS = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256},
    "yarn_full": {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 256, "beta_fast": 16,
                  "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.5, "truncate": False},
    "yarn_attention": {"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.25,
                       "original_max_position_embeddings": 256},
    "longrope": {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                 "original_max_position_embeddings": 256},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256},
    "proportional": {"rope_type": "proportional", "partial_rotary_factor": 0.25},
    "proportional_scaled": {"rope_type": "proportional", "partial_rotary_factor": 0.5, "factor": 2.0},
}


def config_dict(rope, *, old_form, partial=None, max_position=2048, theta=10000.0):
  config = {"hidden_size": 2 * HEAD_DIM, "num_attention_heads": 2, "head_dim": HEAD_DIM,
            "max_position_embeddings": max_position}
  if old_form:
    scaling = {("type" if k == "rope_type" else k): v for k, v in rope.items()}
    config.update(rope_theta=theta, rope_scaling=None if rope["rope_type"] == "default" else scaling)
    if partial:
      config["partial_rotary_factor"] = partial
  else:
    config["rope_parameters"] = {**rope, "rope_theta": theta}
    if partial:
      config["rope_parameters"]["partial_rotary_factor"] = partial
  return config


def hf_reference(config, seq_len):
  hf = LlamaConfig(**config)
  rope_type = hf.rope_parameters["rope_type"]
  if rope_type == "default":
    inv, factor = PhiRotaryEmbedding.compute_default_rope_parameters(config=hf, device="cpu")
  else:
    inv, factor = ROPE_INIT_FUNCTIONS[rope_type](hf, "cpu", seq_len=seq_len)
  return inv.double().numpy(), float(factor)


@pytest.mark.parametrize("key", sorted(ROPE_SETTINGS))
@pytest.mark.parametrize("old_form", [False, True])
@pytest.mark.parametrize("seq_len", [100, 2048, 8192])
def test_translation_matches_transformers(key, old_form, seq_len):
  partial = 0.5 if key == "default" else None
  rope = ROPE_SETTINGS[key]
  if partial and rope["rope_type"] == "longrope":
    pytest.fail("test setup: longrope factors sized for full rotary")
  config = config_dict(rope, old_form=old_form, partial=partial)
  enc = encoding_from_hf(config)
  inv, factor = hf_reference(config, seq_len)
  np.testing.assert_allclose(enc.inv_freq(HEAD_DIM, seq_len), inv, rtol=2e-6)
  assert enc.attention_scaling(seq_len) == pytest.approx(factor, rel=1e-12)


@pytest.mark.parametrize("key", sorted(ROPE_SETTINGS))
def test_export_round_trips_through_transformers(key):
  config = config_dict(ROPE_SETTINGS[key], old_form=False)
  enc = encoding_from_hf(config)
  exported = dict(config, rope_parameters=encoding_to_hf(enc, max_position_embeddings=2048))
  for seq_len in (100, 4096):
    inv, factor = hf_reference(exported, seq_len)
    np.testing.assert_allclose(enc.inv_freq(HEAD_DIM, seq_len), inv, rtol=2e-6)
    assert enc.attention_scaling(seq_len) == pytest.approx(factor, rel=1e-12)
  assert encoding_from_hf(exported) == enc


@pytest.mark.parametrize("rope,needle", [
    ({"rope_type": "su"}, "field 'rope_type' is 'su'"),
    ({"rope_type": "linear"}, "field 'factor' is required"),
    ({"rope_type": "linear", "factor": "two"}, "field 'factor' must be a number"),
    ({"rope_type": "linear", "factor": 0.5}, "'factor' must be >= 1"),
    ({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}, "field 'low_freq_factor' is required"),
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": 3}, "field 'long_factor' must be a list"),
])
def test_malformed_settings_name_the_field(rope, needle):
  with pytest.raises(HFConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    encoding_from_hf(config_dict(rope, old_form=False))


def test_export_refuses_what_transformers_cannot_express():
  from rope_lab import pe
  with pytest.raises(HFConfigError, match="no Hugging Face rope_type"):
    encoding_to_hf(pe.make("xpos", layout="half"), max_position_embeddings=512)
  with pytest.raises(HFConfigError, match="rotate-half only"):
    encoding_to_hf(pe.make("rope", layout="interleaved"), max_position_embeddings=512)
