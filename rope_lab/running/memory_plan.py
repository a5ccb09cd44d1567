"""Device memory of a long-context fine-tuning step, computed from the model shape and the mesh.

What a training step of ``rope_lab.training.step`` holds on each device (no activation
rematerialisation besides the attention blocks, which ``chunked`` and the fused kernels
recompute; nothing quadratic in L is stored):

* state: float32 parameters, float32 gradients and AdamW's two float32 moments, 16 bytes
  per parameter, split over fsdp x tensor (the rule table shards every matrix over one or
  both; norms are negligible and counted as split too);
* activations kept for the backward pass, per layer and token, in the compute dtype:
  the block input, the two norm outputs and the residual after attention (4 D), q, k, v
  before and after rotation (2 (H + 2K) Dh, counting v twice keeps the sum simple and
  errs high), the attention output (H Dh), the MLP's gate, up and product (3 F); plus
  the float32 logits and their gradient (2 x 4 V bytes per token). Tokens are split over
  the batch axes and the sequence axis; head and MLP widths over tensor.
* context parallelism (sequence > 1): each layer also keeps the all-gathered q, k, v and
  output of the whole row, (2 H + 2 K) Dh values per token of the row, split over tensor.

The estimate ignores XLA's temporary buffers and fragmentation; leave ~10-20% headroom.
"""

from __future__ import annotations

import dataclasses

from rope_lab.errors import check
from rope_lab.model.skeleton import ModelConfig

GIB = 2 ** 30
STATE_BYTES_PER_PARAM = 16  # float32 parameter, gradient, Adam m and v
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of one training step (see the module docstring for each term)."""

  params: int
  state_bytes: int
  activation_bytes: int
  gathered_bytes: int

  @property
  def total_bytes(self) -> int:
    return self.state_bytes + self.activation_bytes + self.gathered_bytes

  def describe(self) -> str:
    return (f"{self.params / 1e9:.2f}B params: state {self.state_bytes / GIB:.1f} GiB + activations "
            f"{self.activation_bytes / GIB:.1f} GiB + gathered rows {self.gathered_bytes / GIB:.1f} GiB "
            f"= {self.total_bytes / GIB:.1f} GiB per device")


def parameter_count(cfg: ModelConfig) -> int:
  """Every parameter of ``rope_lab.model.skeleton.Transformer`` (no learned position table)."""
  d, h, k, dh, f, v = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  norm = d if cfg.norm == "rms" else 2 * d
  attention = d * (h + 2 * k) * dh + h * dh * d + (((h + 2 * k) * dh) if cfg.qkv_bias else 0)
  mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f
  per_layer = attention + mlp + 2 * norm
  head = 0 if cfg.tied_embeddings else d * v
  return v * d + cfg.n_layers * per_layer + norm + head


def training_memory(cfg: ModelConfig, *, seq_len: int, rows: int = 1, data: int = 1, fsdp: int = 1,
                    tensor: int = 1, sequence: int = 1) -> MemoryPlan:
  """Per-device memory of a step over ``rows`` rows of ``seq_len`` tokens on the given mesh."""
  check(rows % (data * fsdp) == 0, "training_memory rows", f"a multiple of data x fsdp = {data * fsdp}", rows)
  check(seq_len % (2 * sequence) == 0 if sequence > 1 else seq_len >= 1, "training_memory seq_len",
        f"a multiple of 2 x sequence = {2 * sequence}", seq_len)
  params = parameter_count(cfg)
  state = STATE_BYTES_PER_PARAM * params // (fsdp * tensor)
  width = DTYPE_BYTES[cfg.compute_dtype]
  d, h, k, dh, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
  tokens = rows * seq_len // (data * fsdp * sequence)
  per_token_layer = 4 * d + (2 * (h + 2 * k) * dh + h * dh + 3 * f) // tensor
  activations = cfg.n_layers * tokens * per_token_layer * width + tokens * 2 * 4 * cfg.vocab_size
  gathered = 0
  if sequence > 1:
    row_tokens = rows * seq_len // (data * fsdp)
    gathered = cfg.n_layers * row_tokens * (2 * h + 2 * k) * dh // tensor * width
  return MemoryPlan(params, state, activations, gathered)
