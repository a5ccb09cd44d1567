"""LogN (Qwen) and Llama 4's attention temperature tuning against their reference code, by hand.

Qwen-7B's modeling_qwen.py: logn_list[i - 1] = log_L(i) for token i > L (1-based), else 1,
multiplied into the queries; get_ntk_alpha: alpha = max(2^ceil(log2(n / L) + 1) - 1, 1),
base x alpha^(d / (d - 2)). transformers' Llama4TextAttention on NoPE layers:
q x (log1p(floor((p + 1) / floor_scale)) * attn_scale + 1).
"""

import math

import numpy as np
import pytest
import torch

from rope_lab import pe
from rope_lab.pe import apply as pe_apply
from tests.test_attention import DH, rotate_half_np
from tests.test_pe_attention_by_hand import check_all_paths


def test_logn_scales_match_qwen():
  seq_length = 16
  hooks = pe.make("logn", original_max_position_embeddings=seq_length).hooks(
      head_dim=8, n_heads=1, d_model=8, seq_len=64)
  logn_list = [math.log(i, seq_length) if i > seq_length else 1 for i in range(1, 65)]
  got = pe_apply.query_scales(hooks.query_scale, np.arange(64)[None])[0]
  np.testing.assert_allclose(got, logn_list, rtol=1e-6)


@pytest.mark.parametrize("n,alpha", [(8, 1), (16, 1), (17, 3), (24, 3), (32, 3), (33, 7), (64, 7), (65, 15)])
def test_qwen_dynamic_ntk_alpha(n, alpha):
  seq_length, dim = 16, 64
  context_value = math.log(n / seq_length, 2) + 1
  assert max(2 ** math.ceil(context_value) - 1, 1) == alpha  # Qwen's get_ntk_alpha, by hand
  enc = pe.make("logn", original_max_position_embeddings=seq_length)
  base = 10000.0 * alpha ** (dim / (dim - 2))
  np.testing.assert_allclose(enc.inv_freq(dim, n), 1.0 / base ** (np.arange(0, dim, 2) / dim), rtol=1e-12)
  plain = pe.make("logn", original_max_position_embeddings=seq_length, dynamic_ntk="none")
  np.testing.assert_allclose(plain.inv_freq(dim, n), 1.0 / 10000.0 ** (np.arange(0, dim, 2) / dim), rtol=1e-12)


@pytest.mark.parametrize("floor_scale,attn_scale", [(8192.0, 0.1), (4.0, 0.1), (3.0, 0.25)])
def test_llama4_temperature_tuning_matches_transformers_formula(floor_scale, attn_scale):
  positions = torch.arange(100000, dtype=torch.float32)
  want = torch.log1p(torch.floor((positions + 1.0) / floor_scale)) * attn_scale + 1.0
  hooks = pe.make("nope", attn_temperature_tuning=True, floor_scale=floor_scale, attn_scale=attn_scale).hooks(
      head_dim=8, n_heads=1, d_model=8, seq_len=8)
  got = pe_apply.query_scales(hooks.query_scale, np.arange(100000)[None])[0]
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
  assert pe.make("nope").hooks(head_dim=8, n_heads=1, d_model=8, seq_len=8).query_scale is None


def test_llama4_temperature_runs_through_every_attention_path():
  floor_scale, attn_scale = 4.0, 0.5
  params = {"attn_temperature_tuning": True, "floor_scale": floor_scale, "attn_scale": attn_scale}

  def logit(q, k, b, h, i, j, kv):
    scale = math.log1p(math.floor((i + 1) / floor_scale)) * attn_scale + 1
    return scale * (q[b, i, h] @ k[b, j, kv]) / math.sqrt(DH)
  check_all_paths("nope", params, 4, 2, logit, seed=31)


def test_logn_runs_through_every_attention_path():
  seq_length = 8  # L = 19 tokens: alpha = 2^ceil(log2(19 / 8) + 1) - 1 = 7
  base = 10000.0 * 7 ** (DH / (DH - 2))

  def logit(q, k, b, h, i, j, kv):
    scale = math.log(i + 1, seq_length) if i + 1 > seq_length else 1.0
    return scale * rotate_half_np(q[b, i, h], i, base) @ rotate_half_np(k[b, j, kv], j, base) / math.sqrt(DH)
  check_all_paths("logn", {"original_max_position_embeddings": seq_length}, 4, 2, logit, seed=32)
