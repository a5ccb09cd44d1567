"""Per-layer encodings: Gemma 3's local/global bases and Llama 4's NoPE layers, against transformers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import Gemma3TextConfig, Llama4TextConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

from rope_lab import pe

from rope_lab.model import skeleton as model
from rope_lab.interop.hf_rope import HFConfigError, encoding_from_hf, encoding_to_hf, per_layer_to_hf


HEAD_DIM = 32
GEMMA_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
              "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}


def gemma_config(layer_types, rope_parameters):
  return {"model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 2, "head_dim": HEAD_DIM,
          "num_hidden_layers": len(layer_types), "layer_types": layer_types, "rope_parameters": rope_parameters,
          "max_position_embeddings": 4096}


def assert_matches_gemma(enc, config):
  hf = Gemma3RotaryEmbedding(Gemma3TextConfig(**{k: v for k, v in config.items() if k != "model_type"}))
  for i, layer_type in enumerate(config["layer_types"]):
    ours = enc.layer_encodings(len(config["layer_types"]))[i]
    np.testing.assert_allclose(ours.inv_freq(HEAD_DIM, 100), getattr(hf, f"{layer_type}_inv_freq").double().numpy(),
                               rtol=2e-6)
    assert ours.attention_scaling(100) == pytest.approx(getattr(hf, f"{layer_type}_attention_scaling"))


def test_gemma3_local_global_import_and_export_match_transformers():
  layer_types = ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 2
  config = gemma_config(layer_types, GEMMA_ROPE)
  enc = encoding_from_hf(config)
  assert enc.layer_pattern == "LLLLLGLL" and enc.global_factor == 8.0
  assert_matches_gemma(enc, config)
  exported = per_layer_to_hf(enc, n_layers=8)
  assert exported["layer_types"] == layer_types
  assert_matches_gemma(enc, {**config, **exported})
  assert encoding_from_hf({**config, **exported}) == enc


def test_llama4_no_rope_layers_import_and_export():
  hf = Llama4TextConfig(num_hidden_layers=8, no_rope_layer_interval=4)  # transformers builds the NoPE layers
  config = {"model_type": "llama4_text", "hidden_size": 64, "num_attention_heads": 2, "head_dim": HEAD_DIM,
            "max_position_embeddings": 4096, "no_rope_layers": hf.no_rope_layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "attn_temperature_tuning": hf.attn_temperature_tuning, "floor_scale": hf.floor_scale,
            "attn_scale": hf.attn_scale}
  enc = encoding_from_hf(config)
  assert enc.layer_pattern == "GGGNGGGN" and enc.global_base == 500000.0
  assert enc.attn_temperature_tuning and enc.floor_scale == 8192 and enc.attn_scale == 0.1
  exported = per_layer_to_hf(enc, n_layers=8)
  assert exported["no_rope_layers"] == hf.no_rope_layers
  assert encoding_from_hf({**config, **exported}) == enc


def test_per_layer_refusals_name_the_field():
  with pytest.raises(pe.ConfigError, match="'layer_pattern' must be a non-empty string"):
    pe.make("per_layer", layer_pattern="LXG")
  with pytest.raises(HFConfigError, match="layer types \\['chunked_attention'\\]"):
    encoding_from_hf(gemma_config(["chunked_attention"], {"chunked_attention": {"rope_type": "default"}}))
  with pytest.raises(HFConfigError, match="support rope_type 'default' or 'linear', got 'yarn'"):
    encoding_from_hf(gemma_config(["full_attention"], {"full_attention": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}}))
  with pytest.raises(HFConfigError, match="both 'L' and 'N'"):
    per_layer_to_hf(pe.make("per_layer", layer_pattern="LN"), n_layers=2)
  with pytest.raises(HFConfigError, match="use per_layer_to_hf"):
    encoding_to_hf(pe.make("per_layer", layer_pattern="G"), max_position_embeddings=64)


CFG = model.ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, mlp_dim=32, init_std=0.2)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 32, (1, 8)), jnp.int32)


@functools.lru_cache(maxsize=1)
def params():
  """One parameter tree serves every encoding here (only learned APE changes the tree)."""
  return model.init_params(CFG, pe.make("rope").hooks(head_dim=16, n_heads=2, d_model=32, seq_len=8),
                           jax.random.key(0))


@functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
def _apply(p, tokens, hooks):
  return model.Transformer(CFG).apply({"params": p}, tokens, hooks=hooks, return_attention=True)


def forward(spec, seq_len=8):
  """(logits, attention probabilities [n_layers, B, H, L, L]) under the encoding ``spec``."""
  hooks = pe.from_dict(spec).hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=seq_len)
  return _apply(params(), TOKENS, hooks)


def test_each_layer_uses_its_own_encoding():
  rope = {"name": "rope"}
  logits_rope, probs_rope = forward(rope)
  np.testing.assert_allclose(forward({"name": "per_layer", "layer_pattern": "G", "global_base": 10000.0})[0],
                             logits_rope, atol=1e-6)
  tuned = {"attn_temperature_tuning": True, "floor_scale": 2.0, "attn_scale": 0.5}
  np.testing.assert_allclose(forward({"name": "per_layer", "layer_pattern": "N", **tuned})[0],
                             forward({"name": "nope", **tuned})[0], atol=1e-6)
  # Layer 0 sees the same input whatever layer 1 does: its attention follows its own letter.
  _, probs_gn = forward({"name": "per_layer", "layer_pattern": "GN", "global_base": 10000.0})
  _, probs_ng = forward({"name": "per_layer", "layer_pattern": "NG", "global_base": 10000.0})
  _, probs_nope = forward({"name": "nope"})
  np.testing.assert_allclose(probs_gn[0], probs_rope[0], atol=1e-6)
  np.testing.assert_allclose(probs_ng[0], probs_nope[0], atol=1e-6)
  assert not np.allclose(probs_gn[1], probs_rope[1], atol=1e-4)  # layer 1 of GN has no rotation


def test_per_layer_hooks_refuse_longer_inputs():
  with pytest.raises(pe.ConfigError, match="position 7 is beyond the hooks, which were made for seq_len 4"):
    forward({"name": "per_layer", "layer_pattern": "NG"}, seq_len=4)
