"""A test-sized experiment: 1 layer, width 32, 4 query heads sharing 2 key/value heads,
rows of 16 random bytes, 8 rows a step.

Used in-process (``get_config``) and by the subprocess tests
(``python -m experiments.train --config=tests/tiny_config.py``), so both build the
same run. Compiles in about a second on one CPU core. Every field not set here is
configs/tiny_cpu.py's.
"""

from configs import common, tiny_cpu


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, "tests/tiny_config.py", pe="rope")
  config = tiny_cpu.get_config()
  config.model.update(vocab_size=258, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                      mlp_dim=64, attention="dot_product")
  config.data.update(dataset="random:", tokenizer="byte")
  config.pe = common.pe_config(arg.pe, context={"original_max_position_embeddings": 16})
  # A constant schedule makes runs that differ only in `steps` share one compiled program.
  config.update(seq_len=16, global_batch_size=8, steps=6, learning_rate=1e-2, warmup_steps=2,
                lr_schedule="constant",
                log_every=1, eval_every=0, checkpoint_every=0, keep_checkpoints=3,
                async_checkpointing=False, tensorboard=False)
  return config


def get_sweep(arg: str | None = None):
  """Two seeds x two encodings: the sweep tests' grid."""
  del arg
  return common.product(common.sweep("pe", ["rope", "alibi"]), common.sweep("config.seed", [0, 1]))
