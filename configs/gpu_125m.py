"""A ~125M-parameter Llama-style byte-level model with 2K context for one GPU.

12 layers, width 768, 12 heads of 64, SwiGLU hidden 3456, untied 384-row vocabulary
(258 byte ids padded to a multiple of 128): 124.5M parameters. bfloat16 compute with
float32 parameters, optimizer state, softmax and loss. 32 rows of 2048 tokens per step
(65K tokens) as 4 accumulated micro-batches of 8 (with attention='dot_product', which
materialises the [B, H, L, L] scores, 16 rows at once do not fit in 80 GB), AdamW 6e-4
with 1000 warmup steps and cosine decay over 20K steps, on the King James Bible plus
the Python standard library. On an H100 the real loop ran at ~148K tokens/s with 4-row
micro-batches (benchmarks/README.md).

Launch (from the repository root, one GPU):

  python -m experiments.train --config=configs/gpu_125m.py --workdir=/tmp/rope_lab/gpu_125m

Fine-tune the result to 8K context with YaRN (the protocol of the YaRN paper: factor 4,
constant learning rate 2e-5 after 20 warmup steps, a few hundred steps):

  python -m experiments.train --config=configs/gpu_125m.py:finetune_8k \\
      --config.init_from=/tmp/rope_lab/gpu_125m --workdir=/tmp/rope_lab/gpu_125m_yarn8k

Throughput on an H100: ``python -m benchmarks.train_throughput --device=gpu``.
"""

from rope_lab.config import default_config_dict, pe_config_dict


def get_config(arg: str | None = None):
  variants = set(arg.split(",")) if arg else set()
  if variants - {"finetune_8k"}:
    raise ValueError(f"configs/gpu_125m.py: unknown variant(s) {sorted(variants - {'finetune_8k'})}")
  config = default_config_dict()
  config.model.update(vocab_size=384, d_model=768, n_layers=12, n_heads=12, mlp_dim=3456,
                      mlp="swiglu", norm="rms", attention="dot_product",
                      compute_dtype="bfloat16")
  config.data.update(dataset="kjv+pystdlib", tokenizer="byte")
  config.pe = pe_config_dict("rope", base=10000.0)
  config.update(seq_len=2048, global_batch_size=32, grad_accum_steps=4, steps=20000,
                learning_rate=6e-4, warmup_steps=1000, lr_schedule="cosine", min_lr_ratio=0.1,
                weight_decay=0.1, grad_clip_norm=1.0, log_every=50, eval_every=1000,
                eval_batches=8, checkpoint_every=1000, keep_checkpoints=3, mesh_shape=(-1, 1, 1))
  if "finetune_8k" in variants:
    config.pe = pe_config_dict("yarn", factor=4.0, original_max_position_embeddings=2048)
    config.update(seq_len=8192, global_batch_size=8, grad_accum_steps=8, steps=400,
                  learning_rate=2e-5, warmup_steps=20, lr_schedule="constant", weight_decay=0.0,
                  eval_every=100, checkpoint_every=100)
  return config
