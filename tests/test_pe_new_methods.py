"""Proportional RoPE / p-RoPE, Resonance RoPE, HoPE and the one-screen reference ``apply_rope``.

Outside references: transformers' "proportional" rope type and its ``apply_rotary_pos_emb``,
the Resonance RoPE reference's rounding (2 pi / round(2 pi / theta)) and HoPE's cut-off,
worked by hand.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from rope_lab import pe

from rope_lab.model import attention
from rope_lab.pe import apply as pe_apply
from rope_lab.pe.reference_rope import apply_rope
from tests.test_attention import ATOL, DH, hooks_for, meta_for, qkv, run


def table_path(encoding, x_BxLxHxD, positions_BxL):
  head_dim = x_BxLxHxD.shape[-1]
  hooks = encoding.hooks(head_dim=head_dim, n_heads=x_BxLxHxD.shape[2], d_model=64,
                         seq_len=int(positions_BxL.max()) + 1)
  q, _ = pe_apply.rotate_qk(hooks, x_BxLxHxD, x_BxLxHxD, positions_BxL, positions_BxL)
  return np.asarray(q)


@pytest.mark.parametrize("spec,kwargs", [
    ({"name": "rope", "base": 10000.0}, dict(base_frequency=10000.0)),
    ({"name": "rope", "base": 500000.0}, dict(base_frequency=500000.0)),
    ({"name": "pi", "factor": 4.0}, dict(base_frequency=10000.0, scale_factor=4.0)),
    ({"name": "proportional", "rope_proportion": 0.25}, dict(base_frequency=10000.0, rope_proportion=0.25)),
    ({"name": "proportional", "rope_proportion": 0.5, "factor": 2.0},
     dict(base_frequency=10000.0, rope_proportion=0.5, scale_factor=2.0)),
    ({"name": "proportional", "rope_proportion": 0.0}, dict(base_frequency=10000.0, rope_proportion=0.0)),
])
def test_exact_angle_tables_equal_the_reference_apply_rope(spec, kwargs):
  x = np.random.default_rng(0).normal(size=(2, 40, 3, 16)).astype(np.float32)
  positions = np.stack([np.arange(40), np.arange(40) * 7 + 3])  # up to 276: float32 angles still exact
  want = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), **kwargs))
  np.testing.assert_allclose(table_path(pe.from_dict(spec), x, positions), want, atol=2e-5)


def test_reference_apply_rope_matches_transformers_proportional():
  head_dim, p = 16, 0.25
  config = LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=head_dim, max_position_embeddings=64,
                       rope_parameters={"rope_type": "proportional", "rope_theta": 10000.0,
                                        "partial_rotary_factor": p})
  inv, _ = ROPE_INIT_FUNCTIONS["proportional"](config, "cpu")
  positions = torch.arange(20, dtype=torch.float64)
  freqs = torch.outer(positions, inv.double())
  emb = torch.cat([freqs, freqs], dim=-1)
  x = np.random.default_rng(1).normal(size=(1, 2, 20, head_dim))  # HF layout [B, H, L, D]
  q_hf, _ = apply_rotary_pos_emb(torch.tensor(x), torch.tensor(x), emb.cos()[None], emb.sin()[None])
  ours = apply_rope(jnp.asarray(x.transpose(0, 2, 1, 3), jnp.float32), jnp.arange(20)[None],
                    base_frequency=10000.0, rope_proportion=p)
  np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1, 3), q_hf.numpy(), atol=2e-5)


def test_proportional_inv_freq_matches_transformers():
  for head_dim, p, factor in [(64, 0.25, 1.0), (128, 0.5, 4.0), (32, 1.0, 1.0), (64, 0.0, 1.0)]:
    params = {"rope_type": "proportional", "rope_theta": 10000.0, "partial_rotary_factor": p, "factor": factor}
    config = LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                         max_position_embeddings=64, rope_parameters=params)
    inv, attention_factor = ROPE_INIT_FUNCTIONS["proportional"](config, "cpu")
    enc = pe.make("proportional", rope_proportion=p, factor=factor)
    np.testing.assert_allclose(enc.inv_freq(head_dim, 100), inv.double().numpy(), rtol=2e-6, atol=0)
    assert enc.attention_scaling(100) == attention_factor == 1.0


def test_proportional_refuses_a_rotary_fraction():
  with pytest.raises(pe.ConfigError, match="'rotary_fraction' must be 1.0"):
    pe.make("proportional", rotary_fraction=0.5)
  with pytest.raises(pe.ConfigError, match="'rope_proportion' must be in"):
    pe.make("proportional", rope_proportion=1.5)


def test_resonance_rounds_wavelengths_by_hand():
  # d = 8, base 1e4: theta = 1, 0.1, 0.01, 0.001; wavelengths 6.28, 62.8, 628.3, 6283.2 -> 6, 63, 628, 6283.
  want = [2 * math.pi / 6, 2 * math.pi / 63, 2 * math.pi / 628, 2 * math.pi / 6283]
  np.testing.assert_allclose(pe.make("resonance").inv_freq(8, 10), want, rtol=1e-12)


def test_hope_drops_pairs_longer_than_the_training_length_by_hand():
  # d = 16, base 1e4: wavelengths 2 pi * 10^(i/2) = 6.3, 19.9, 62.8, 198.7, ...; L_orig 64 keeps three.
  want = [1.0, 10 ** -0.5, 0.1, 0, 0, 0, 0, 0]
  np.testing.assert_allclose(pe.make("hope", original_max_position_embeddings=64).inv_freq(16, 10), want,
                             rtol=1e-12)


@pytest.mark.parametrize("name,params", [
    ("proportional", {"rope_proportion": 0.5}),
    ("resonance", {}),
    ("hope", {"original_max_position_embeddings": 16}),
])
def test_new_rotary_methods_run_through_every_attention_path(name, params):
  hooks = hooks_for(name, params)
  meta = meta_for(hooks)
  q, k, v = qkv(21, 4, 2)
  want = run(q, k, v, meta, hooks, "reference")
  assert not np.allclose(want, run(q, k, v, meta, hooks_for("nope", {}), "reference"), atol=1e-3)
  for impl in attention.IMPLEMENTATIONS:
    np.testing.assert_allclose(run(q, k, v, meta, hooks, impl), want, atol=ATOL, err_msg=impl)
