"""Parity with Hugging Face transformers' rope initialisers for every rope_type it has."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

from rope_lab import pe
from rope_lab.pe import rotary

HEAD_DIMS = (32, 64, 128)
BASES = (10000.0, 500000.0)
ORIGINAL = 512


def hf_config(head_dim, base, rope_parameters, max_position=ORIGINAL, partial=1.0):
  params = {"rope_theta": base, **rope_parameters}
  if partial != 1.0:
    params["partial_rotary_factor"] = partial
  return LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                     max_position_embeddings=max_position, rope_parameters=params)


def hf_inv_freq(config, rope_type, seq_len=None):
  if rope_type == "default":
    # Phi's default initialiser honours partial_rotary_factor (Llama's ignores it).
    inv, factor = PhiRotaryEmbedding.compute_default_rope_parameters(config=config, device="cpu")
  else:
    inv, factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
  return inv.double().numpy(), float(factor)


def assert_same(ours_inv, ours_factor, hf_inv, hf_factor):
  # transformers computes in float32; we compute in float64.
  np.testing.assert_allclose(ours_inv, hf_inv, rtol=2e-6, atol=0)
  assert ours_factor == pytest.approx(hf_factor, rel=1e-12)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("partial", (1.0, 0.5))
def test_default(head_dim, base, partial):
  enc = pe.make("rope", base=base, rotary_fraction=partial)
  hf = hf_inv_freq(hf_config(head_dim, base, {"rope_type": "default"}, partial=partial), "default")
  assert_same(enc.inv_freq(head_dim, 100), enc.attention_scaling(100), *hf)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("factor", (1.0, 2.0, 8.0))
def test_linear(head_dim, base, factor):
  enc = pe.make("pi", base=base, factor=factor)
  hf = hf_inv_freq(hf_config(head_dim, base, {"rope_type": "linear", "factor": factor}), "linear")
  assert_same(enc.inv_freq(head_dim, 100), enc.attention_scaling(100), *hf)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor", (1.0, 2.0, 4.0))
@pytest.mark.parametrize("seq_len", (100, ORIGINAL, ORIGINAL + 1, 3000, 16384))
def test_dynamic(head_dim, factor, seq_len):
  enc = pe.make("dynamic_ntk", factor=factor, original_max_position_embeddings=ORIGINAL)
  config = hf_config(head_dim, 10000.0, {"rope_type": "dynamic", "factor": factor})
  hf = hf_inv_freq(config, "dynamic", seq_len=seq_len)
  assert_same(enc.inv_freq(head_dim, seq_len), enc.attention_scaling(seq_len), *hf)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("factor", (2.0, 8.0, 32.0))
@pytest.mark.parametrize("truncate", (True, False))
def test_yarn(head_dim, base, factor, truncate):
  enc = pe.make("yarn", base=base, factor=factor, original_max_position_embeddings=ORIGINAL, truncate=truncate)
  params = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": ORIGINAL,
            "truncate": truncate}
  hf = hf_inv_freq(hf_config(head_dim, base, params, max_position=int(ORIGINAL * factor)), "yarn")
  assert_same(enc.inv_freq(head_dim, 100), enc.attention_scaling(100), *hf)


@pytest.mark.parametrize("extra", [
    {"beta_fast": 16.0, "beta_slow": 2.0},
    {"mscale": 0.707, "mscale_all_dim": 0.707},
    {"mscale": 1.0, "mscale_all_dim": 0.5},
    {"attention_factor": 1.3},
])
def test_yarn_options(extra):
  enc = pe.make("yarn", factor=16.0, original_max_position_embeddings=ORIGINAL, **extra)
  params = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": ORIGINAL, **extra}
  hf = hf_inv_freq(hf_config(64, 10000.0, params, max_position=ORIGINAL * 16), "yarn")
  assert_same(enc.inv_freq(64, 100), enc.attention_scaling(100), *hf)


def longrope_factors(pairs, top, seed):
  rng = np.random.default_rng(seed)
  return sorted(1.0 + rng.random(pairs) * (top - 1.0))


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("seq_len", (100, ORIGINAL, ORIGINAL + 1, 8192))
@pytest.mark.parametrize("max_position", (ORIGINAL * 4, ORIGINAL * 16))
def test_longrope(head_dim, seq_len, max_position):
  short = longrope_factors(head_dim // 2, 1.5, 0)
  long = longrope_factors(head_dim // 2, max_position / ORIGINAL, 1)
  factor = max_position / ORIGINAL
  enc = pe.make("longrope", short_factor=short, long_factor=long, original_max_position_embeddings=ORIGINAL,
                factor=factor)
  params = {"rope_type": "longrope", "short_factor": short, "long_factor": long,
            "original_max_position_embeddings": ORIGINAL}
  hf = hf_inv_freq(hf_config(head_dim, 10000.0, params, max_position=max_position), "longrope", seq_len=seq_len)
  assert_same(enc.inv_freq(head_dim, seq_len), enc.attention_scaling(seq_len), *hf)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor,low,high,original", [(8.0, 1.0, 4.0, 8192), (4.0, 2.0, 8.0, 1024), (32.0, 1.0, 4.0, 256)])
def test_llama3(head_dim, factor, low, high, original):
  enc = pe.make("llama3", base=500000.0, factor=factor, low_freq_factor=low, high_freq_factor=high,
                original_max_position_embeddings=original)
  params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": original}
  hf = hf_inv_freq(hf_config(head_dim, 500000.0, params), "llama3")
  assert_same(enc.inv_freq(head_dim, 100), enc.attention_scaling(100), *hf)


@pytest.mark.parametrize("layout_partial", [1.0, 0.5])
def test_cos_sin_and_rotation_match_transformers(layout_partial):
  """Tables + rotate-half application give HF's rotated q (HF folds the factor into cos/sin)."""
  head_dim, seq_len = 64, 2048
  enc = pe.make("yarn", factor=4.0, original_max_position_embeddings=ORIGINAL, rotary_fraction=layout_partial)
  params = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}
  config = hf_config(head_dim, 10000.0, params, max_position=ORIGINAL * 4, partial=layout_partial)
  rope = PhiRotaryEmbedding(config)  # honours partial_rotary_factor
  positions = torch.arange(seq_len)[None]
  x = torch.randn(1, 2, seq_len, head_dim)
  cos, sin = rope(x, positions)
  rot_dim = enc.rotary_dim(head_dim)
  rot_dim = enc.rotary_dim(head_dim)
  q_rot, _ = apply_rotary_pos_emb(x[..., :rot_dim], x[..., :rot_dim], cos, sin)
  q_hf = torch.cat([q_rot, x[..., rot_dim:]], dim=-1)

  hooks = enc.hooks(head_dim=head_dim, n_heads=2, d_model=2 * head_dim, seq_len=seq_len)
  our_cos, our_sin = rotary.cos_sin(hooks.rotary, np.arange(seq_len)[None])
  scale = math.sqrt(float(hooks.logit_scale))
  np.testing.assert_allclose(np.asarray(our_cos) * scale, cos[..., : rot_dim // 2].numpy(), atol=5e-4)
  x_bl = np.transpose(x.numpy(), (0, 2, 1, 3))  # [B, L, H, D]
  q_ours = rotary.apply_rotary(x_bl, our_cos, our_sin, rotary_dim=rot_dim, layout="half")
  q_ours = np.array(q_ours)
  q_ours[..., :rot_dim] *= scale
  np.testing.assert_allclose(q_ours, np.transpose(q_hf.numpy(), (0, 2, 1, 3)), atol=2e-3)


@pytest.mark.parametrize("head_dim", (32, 64))
@pytest.mark.parametrize("seq_len", (2 * ORIGINAL, 3 * ORIGINAL + 7, 16 * ORIGINAL))
def test_dynamic_yarn_is_yarn_at_the_current_ratio(head_dim, seq_len):
  """jquesnelle/yarn's dynamic YaRN: at L > L_orig, YaRN with s = L / L_orig (frequencies and mscale)."""
  enc = pe.make("dynamic_yarn", original_max_position_embeddings=ORIGINAL)
  params = {"rope_type": "yarn", "factor": seq_len / ORIGINAL, "original_max_position_embeddings": ORIGINAL}
  hf = hf_inv_freq(hf_config(head_dim, 10000.0, params, max_position=seq_len), "yarn")
  assert_same(enc.inv_freq(head_dim, seq_len), enc.attention_scaling(seq_len), *hf)
  # Within the trained length it is plain RoPE with no temperature.
  plain = hf_inv_freq(hf_config(head_dim, 10000.0, {"rope_type": "default"}), "default")
  assert_same(enc.inv_freq(head_dim, ORIGINAL), enc.attention_scaling(ORIGINAL), *plain)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("alpha", (2.0, 4.0, 8.0))
def test_fixed_alpha_ntk_is_transformers_dynamic_at_factor_one(head_dim, alpha):
  """transformers "dynamic" with factor 1 at L = alpha L_orig sets base * alpha^(d/(d-2)): fixed NTK."""
  enc = pe.make("ntk", alpha=alpha)
  config = hf_config(head_dim, 10000.0, {"rope_type": "dynamic", "factor": 1.0})
  hf = hf_inv_freq(config, "dynamic", seq_len=int(alpha * ORIGINAL))
  assert_same(enc.inv_freq(head_dim, 100), enc.attention_scaling(100), *hf)
