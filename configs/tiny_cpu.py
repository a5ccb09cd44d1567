"""Tiny byte-level Llama-style model on the King James Bible; trains on a 2-core CPU.

A 4-layer, width-128 model (about 0.8M parameters) on 128-byte rows. On 2 CPU cores the
training loss falls from ln(258) = 5.55 to about 1.3 (validation 1.4) over the
600 steps, in about 3.5 minutes including compilation.

Launch (from the repository root):

  python -m experiments.train --config=configs/tiny_cpu.py --workdir=/tmp/rope_lab/tiny

Arguments (after a colon, comma-separated ``key=value``; a bare flag means ``=true``):

  pe=rope    the encoding (``python -m rope_lab.pe`` lists them); config.pe then holds
             that method's parameters only, e.g. ``--config.pe.beta_fast=16``
  factor=0   the extension factor s of methods that take one (0: 1 for pretraining,
             seq / 128 for a fine-tune)
  seq=0      tokens per row (0: 128; 512 for a fine-tune)
  smoke      40 steps, evaluation and checkpoints every 20: a quick end-to-end check
  finetune   the context-extension protocol (Position Interpolation / YaRN style): start
             from another run's parameters (``--config.init_from``), rows of 512, YaRN
             unless ``pe=`` says otherwise, s = 512 / 128 = 4, a constant learning rate
             of 1e-4 after 20 warmup steps, 200 steps:

  python -m experiments.train --config=configs/tiny_cpu.py:finetune \\
      --config.init_from=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/tiny_yarn512

  longlora   the fine-tune as LongLoRA (Chen et al. 2023): rank-8 LoRA adapters (alpha 16)
             on q, k, v, o with the base weights frozen, embeddings and norms trained,
             shifted sparse attention in groups of seq / 4 while training (full attention
             in evaluation), a learning rate of 1e-3; implies ``finetune``:

  python -m experiments.train --config=configs/tiny_cpu.py:longlora \\
      --config.init_from=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/tiny_longlora512

Another encoding for the fine-tune, and one of its parameters overridden:

  python -m experiments.train --config=configs/tiny_cpu.py:finetune,pe=pi \\
      --config.init_from=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/tiny_pi512
  python -m experiments.train --config=configs/tiny_cpu.py:finetune,pe=yarn,factor=8 \\
      --config.pe.beta_fast=16 --config.init_from=/tmp/rope_lab/tiny \\
      --workdir=/tmp/rope_lab/tiny_yarn8

Sweeps (``get_sweep``, chosen by ``sweep=``; see the README's Sweeps section):

  sweep=seeds     three pretraining seeds (with ``smoke``: a CPU sweep of a few minutes)
  sweep=finetune  PI and YaRN x fine-tune length (256, 512) x learning rate (1e-4, 1e-3)
  sweep=encodings encoding (PI, YaRN, NTK-by-parts, Giraffe power) x factor (2, 4) x seed
                  (0, 1), fine-tuned at 512 tokens
  sweep=giraffe   the Giraffe grid: PI fine-tunes at 2x, 4x and 8x (256, 512, 1024 tokens)
  (the fine-tune sweeps need ``finetune`` in the argument, and ``--set=config.init_from=``)

  python -m experiments.sweep --config=configs/tiny_cpu.py:smoke,sweep=seeds \
      --workdir=/tmp/rope_lab/seeds
  python -m experiments.sweep --config=configs/tiny_cpu.py:finetune,sweep=finetune \
      --set=config.init_from=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/finetune_sweep
"""

import ml_collections

from configs import common

PRETRAIN_LENGTH = 128  # tokens per row of the pretraining run; the fine-tunes extend it
ROPE_BASE = 10000.0  # the rotary base the model is trained with


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, "configs/tiny_cpu.py", pe="", factor=0.0, seq=0, smoke=False,
                         finetune=False, longlora=False, sweep="")
  if arg.longlora:
    arg.finetune = True
  seq_len = arg.seq or (4 * PRETRAIN_LENGTH if arg.finetune else PRETRAIN_LENGTH)
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 258  # 256 bytes + BOS + EOS
  config.model.d_model = 128  # residual width
  config.model.n_layers = 4  # decoder blocks
  config.model.n_heads = 4  # query heads
  config.model.n_kv_heads = ml_collections.config_dict.placeholder(int)  # None: n_heads (fewer: GQA)
  config.model.head_dim = ml_collections.config_dict.placeholder(int)  # None: d_model / n_heads
  config.model.mlp_dim = 512  # MLP hidden width
  config.model.mlp = "swiglu"  # swiglu or gelu
  config.model.norm = "rms"  # rms or layer
  config.model.norm_eps = 1e-6  # epsilon of every norm
  config.model.tied_embeddings = False  # lm head = embedding^T
  config.model.qkv_bias = False  # biases on the q, k, v projections
  config.model.logit_soft_cap = ml_collections.config_dict.placeholder(float)  # None: no cap
  config.model.attention = "dot_product"  # reference, dot_product or chunked
  config.model.chunk_size = 512  # query/key block length of chunked attention
  config.model.compute_dtype = "float32"  # activations; parameters stay float32
  config.model.segment_masking = True  # packed documents do not attend to each other
  config.model.init_std = 0.02  # normal init of the projections
  config.model.embedding_multiplier = 1.0  # on token embeddings; sqrt(d_model) with pe=sinusoidal (below)

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "kjv"  # King James Bible, one document per book (embedded, no download)
  config.data.tokenizer = "byte"  # bytes + BOS/EOS
  config.data.vocab_size = ml_collections.config_dict.placeholder(int)  # None: the tokenizer's
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: ~/tensorflow_datasets
  config.data.ordering = "random"  # document order: random or in_context
  config.data.packing = "pack"  # pack (segments) or concat (one stream)
  config.data.shuffle = True  # shuffle the training rows each epoch
  config.data.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
  config.data.train_split = "train"  # split read for training
  config.data.text_feature = ml_collections.config_dict.placeholder(str)  # None: the dataset's
  config.data.icp_neighbours = 8  # in-context ordering: neighbours per document
  config.data.auto_prepare = True  # build the dataset on first use
  config.data.retrieval_mix = 0.0  # fraction of training rows replaced by short retrieval rows
  config.data.retrieval_min_length = 0  # packed retrieval examples of min..max tokens (0, 0: one per row)
  config.data.retrieval_max_length = 0

  # The encoding: RoPE for pretraining, YaRN for a fine-tune unless pe= says otherwise.
  name = arg.pe or ("yarn" if arg.finetune else "rope")
  factor = arg.factor or (seq_len / PRETRAIN_LENGTH if arg.finetune else 0.0)
  has_factor = "factor" in common.PE_PARAMETERS.get(name, {})
  config.pe = common.pe_config(
      name, **({"factor": factor} if factor and (has_factor or arg.factor) else {}),
      context={"base": ROPE_BASE, "original_max_position_embeddings": PRETRAIN_LENGTH})
  config.model.embedding_multiplier = common.embedding_multiplier(name, config.model.d_model)

  config.seq_len = seq_len  # tokens per training row
  config.global_batch_size = 4 if arg.finetune else 16  # rows per step, all processes
  config.steps = 200 if arg.finetune else 600  # optimizer steps
  config.seed = 0  # init, data order and per-step randomness
  # peak learning rate; adapters need a larger one (60 steps at 512: eval loss 1.423 at 1e-3, 1.497 at 1e-4)
  config.learning_rate = (1e-3 if arg.longlora else 1e-4) if arg.finetune else 3e-3
  config.lr_schedule = "constant" if arg.finetune else "cosine"  # cosine or constant
  config.warmup_steps = 20 if arg.finetune else 50  # linear warmup from 0
  config.min_lr_ratio = 0.1  # end of the cosine, as a fraction of the peak
  config.weight_decay = 0.0 if arg.finetune else 0.1  # AdamW decoupled decay
  config.adam_b1 = 0.9  # AdamW first moment
  config.adam_b2 = 0.95  # AdamW second moment
  config.adam_eps = 1e-8  # AdamW epsilon
  config.grad_clip_norm = 1.0  # global-norm clip; 0 disables
  config.grad_accum_steps = 1  # micro-batches per step
  config.log_every = 10  # steps between metric lines
  config.eval_every = 50 if arg.finetune else 100  # steps between validation losses; 0: never
  config.eval_batches = 4  # validation batches per evaluation
  config.eval_split = "validation"  # split evaluated during training
  config.checkpoint_every = 100 if arg.finetune else 200  # steps between checkpoints; 0: end only
  config.keep_checkpoints = 2  # newest checkpoints kept
  config.async_checkpointing = True  # write checkpoints in the background
  config.init_from = ml_collections.config_dict.placeholder(str)  # a run dir or hf:<dir>; None: scratch
  config.mesh_shape = (-1, 1, 1)  # data x fsdp x tensor devices; -1: the rest
  config.tensorboard = True  # also write TensorBoard events
  config.pose_target_length = 0  # PoSE: train at positions skipped to span this length; 0: off
  config.lora_rank = 8 if arg.longlora else 0  # LoRA adapter rank; 0: train every parameter
  config.lora_alpha = 16.0  # adapter output scale alpha / rank
  config.lora_targets = ("q", "k", "v", "o")  # projections given adapters (base kernels frozen)
  config.lora_trainable = ("embeddings", "norms")  # also trained with adapters (LongLoRA)
  config.s2_attn_group_fraction = 0.25 if arg.longlora else 0.0  # S2-Attn group / seq_len; 0: off
  if arg.smoke:
    config.update(steps=40, warmup_steps=5, eval_every=20, eval_batches=2,
                  checkpoint_every=20, log_every=5)
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """The sweep named by ``sweep=`` in the argument (see the module docstring)."""
  arg = common.parse_arg(arg, "configs/tiny_cpu.py", pe="", factor=0.0, seq=0, smoke=False,
                         finetune=False, longlora=False, sweep="")
  arg.finetune = arg.finetune or arg.longlora
  which = arg.sweep
  if which in ("finetune", "encodings", "giraffe") and not arg.finetune:
    raise ValueError(f"configs/tiny_cpu.py: sweep={which} sweeps fine-tunes; add finetune to "
                     f"the argument (configs/tiny_cpu.py:finetune,sweep={which})")
  if not which:
    return [{}]  # no sweep chosen: the one run get_config(arg) describes
  if which == "seeds":
    return common.sweep("config.seed", [0, 1, 2])
  if which == "finetune":
    return common.product(common.sweep("pe", ["pi", "yarn"]),
                          common.sweep("seq", [256, 512]),
                          common.sweep("config.learning_rate", [1e-4, 1e-3]))
  if which == "encodings":
    return common.product(common.sweep("pe", ["pi", "yarn", "ntk_by_parts", "power"]),
                          common.sweep("factor", [2.0, 4.0]),
                          common.sweep("config.seed", [0, 1]))
  if which == "giraffe":
    return common.product(common.sweep("pe", ["pi"]), common.sweep("seq", [256, 512, 1024]))
  raise ValueError(f"configs/tiny_cpu.py: sweep={which!r}; its sweeps: seeds, finetune, "
                   "encodings, giraffe")
