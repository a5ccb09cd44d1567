"""The fine-tuning memory plan against counts made by hand and a published parameter count."""

import pytest

from rope_lab.running import memory_plan
from rope_lab.errors import ConfigError
from rope_lab.model.skeleton import ModelConfig

# V=10, D=4, one layer, H=2 query heads and K=1 kv head of Dh=2, SwiGLU F=6, untied, float32.
TINY = ModelConfig(vocab_size=10, d_model=4, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=2, mlp_dim=6)


def test_parameter_count_by_hand_and_llama2_7b():
  # embed 10*4 = 40; q,k,v 4*(2+2)*2 = 32; o 2*2*4 = 16; gate, up, down 3*4*6 = 72;
  # two norms 8; final norm 4; lm_head 40: 40 + 128 + 4 + 40 = 212.
  assert memory_plan.parameter_count(TINY) == 212
  llama2_7b = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, mlp_dim=11008)
  assert memory_plan.parameter_count(llama2_7b) == 6_738_415_616  # the model card's count


def test_training_memory_by_hand_with_a_sequence_axis():
  plan = memory_plan.training_memory(TINY, seq_len=8, rows=2, data=2, sequence=2)
  # state: 16 bytes x 212 parameters, not split (fsdp = tensor = 1).
  assert plan.state_bytes == 3392
  # 2 rows x 8 tokens over data 2 x sequence 2: 4 tokens. Per token and layer:
  # 4 D = 16, 2 (H + 2K) Dh = 16, H Dh = 4, 3 F = 18: 54 values of 4 bytes -> 864;
  # logits and their gradient 2 x 4 bytes x 10 per token -> 320.
  assert plan.activation_bytes == 864 + 320
  # The gathered row: 8 tokens x (2 H + 2 K) Dh = 12 values x 4 bytes, one layer -> 384.
  assert plan.gathered_bytes == 384
  assert plan.total_bytes == 4960
  no_split = memory_plan.training_memory(TINY, seq_len=8, rows=2, data=2)
  assert no_split.gathered_bytes == 0 and no_split.activation_bytes == 2 * 864 + 2 * 320


def test_shapes_the_mesh_cannot_split_are_errors_naming_the_argument():
  with pytest.raises(ConfigError, match="rows must be a multiple of data x fsdp = 8"):
    memory_plan.training_memory(TINY, seq_len=8, rows=1, fsdp=8)
  with pytest.raises(ConfigError, match="seq_len must be a multiple of 2 x sequence = 8"):
    memory_plan.training_memory(TINY, seq_len=12, sequence=4)
