"""Tiny byte-level Llama-style model on the King James Bible; trains on a 2-core CPU.

A 4-layer, width-128 model (about 0.8M parameters) on 128-byte rows. On 2 CPU cores the
training loss falls from ln(258) = 5.55 to about 1.3 (validation 1.4) over the
600 steps, in about 3.5 minutes including compilation.

Launch (from the repository root):

  python -m experiments.train --config=configs/tiny_cpu.py --workdir=/tmp/rope_lab/tiny

Variants (after a colon, comma-separated):

  smoke     40 steps, evaluation and checkpoints every 20: a quick end-to-end check.
  finetune  the context-extension protocol (Position Interpolation / YaRN style): start
            from another run's parameters, rows of 512, YaRN x4 over the original 128,
            a constant learning rate of 1e-4 after 20 warmup steps, 200 steps:

  python -m experiments.train --config=configs/tiny_cpu.py:finetune \\
      --config.init_from=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/tiny_yarn512

Any field can be overridden, e.g. another encoding for the fine-tune:

  python -m experiments.train --config=configs/tiny_cpu.py:finetune \\
      --config.init_from=/tmp/rope_lab/tiny --config.pe.name=pi --config.pe.pi.factor=4 \\
      --workdir=/tmp/rope_lab/tiny_pi512

``config.pe.name`` picks the encoding and ``config.pe.<method>`` holds the parameters of
every registered method (``python -m rope_lab.pe`` lists them) as typed placeholders,
None meaning the method's default. Only the chosen method's sub-dict is read, so the
method can be switched on the command line under lock_config without clearing another's.
"""

from rope_lab.config import default_config_dict, pe_config_dict


def get_config(arg: str | None = None):
  variants = set(arg.split(",")) if arg else set()
  unknown = variants - {"smoke", "finetune"}
  if unknown:
    raise ValueError(f"configs/tiny_cpu.py: unknown variant(s) {sorted(unknown)}; "
                     f"known: smoke, finetune")
  config = default_config_dict()
  config.model.update(vocab_size=258, d_model=128, n_layers=4, n_heads=4, mlp_dim=512,
                      attention="dot_product")
  config.data.update(dataset="kjv", tokenizer="byte")
  config.pe = pe_config_dict("rope", base=10000.0)
  config.update(seq_len=128, global_batch_size=16, steps=600, learning_rate=3e-3,
                warmup_steps=50, lr_schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1,
                log_every=10, eval_every=100, eval_batches=4, checkpoint_every=200,
                keep_checkpoints=2)
  if "finetune" in variants:
    config.pe = pe_config_dict("yarn", factor=4.0, original_max_position_embeddings=128)
    config.update(seq_len=512, global_batch_size=4, steps=200, learning_rate=1e-4,
                  warmup_steps=20, lr_schedule="constant", weight_decay=0.0,
                  eval_every=50, checkpoint_every=100)
  if "smoke" in variants:
    config.update(steps=40, warmup_steps=5, eval_every=20, eval_batches=2,
                  checkpoint_every=20, log_every=5)
  return config
