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

Another encoding for the fine-tune: ``configs/gpu_125m.py:finetune_8k,pe=pi`` (s = 8192 /
2048 = 4 unless ``factor=`` says otherwise); ``--config.pe.<param>=`` then sets any parameter
of that encoding.

Throughput on an H100: ``python -m benchmarks.train_throughput --device=gpu``.
"""

import ml_collections

from configs import common

PRETRAIN_LENGTH = 2048  # tokens per row of the pretraining run; finetune_8k extends it
ROPE_BASE = 10000.0  # the rotary base the model is trained with


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, "configs/gpu_125m.py", finetune_8k=False, pe="", factor=0.0)
  ft = arg.finetune_8k
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 384  # 258 byte ids padded to a multiple of 128
  config.model.d_model = 768  # residual width
  config.model.n_layers = 12  # decoder blocks
  config.model.n_heads = 12  # query heads
  config.model.n_kv_heads = ml_collections.config_dict.placeholder(int)  # None: n_heads (fewer: GQA)
  config.model.head_dim = ml_collections.config_dict.placeholder(int)  # None: d_model / n_heads = 64
  config.model.mlp_dim = 3456  # SwiGLU hidden width
  config.model.mlp = "swiglu"  # swiglu or gelu
  config.model.norm = "rms"  # rms or layer
  config.model.norm_eps = 1e-6  # epsilon of every norm
  config.model.tied_embeddings = False  # lm head = embedding^T
  config.model.qkv_bias = False  # biases on the q, k, v projections
  config.model.logit_soft_cap = ml_collections.config_dict.placeholder(float)  # None: no cap
  config.model.attention = "dot_product"  # reference, dot_product or chunked
  config.model.chunk_size = 512  # query/key block length of chunked attention
  config.model.compute_dtype = "bfloat16"  # activations; parameters, softmax and loss stay float32
  config.model.segment_masking = True  # packed documents do not attend to each other
  config.model.init_std = 0.02  # normal init of the projections

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "kjv+pystdlib"  # King James Bible + Python standard library sources
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

  # The encoding: RoPE for pretraining; YaRN with s = 8192 / 2048 for finetune_8k.
  name = arg.pe or ("yarn" if ft else "rope")
  factor = arg.factor or (4.0 if ft and "factor" in common.PE_PARAMETERS.get(name, {}) else 0.0)
  config.pe = common.pe_config(
      name, **({"factor": factor} if factor else {}),
      context={"base": ROPE_BASE, "original_max_position_embeddings": PRETRAIN_LENGTH})
  # on token embeddings: sqrt(d_model) with pe=sinusoidal (Vaswani et al. 2017, §3.4), else 1
  config.model.embedding_multiplier = common.embedding_multiplier(name, config.model.d_model)

  config.seq_len = 8192 if ft else PRETRAIN_LENGTH  # tokens per training row
  config.global_batch_size = 8 if ft else 32  # rows per step, all processes
  config.steps = 400 if ft else 20000  # optimizer steps
  config.seed = 0  # init, data order and per-step randomness
  config.learning_rate = 2e-5 if ft else 6e-4  # peak learning rate
  config.lr_schedule = "constant" if ft else "cosine"  # cosine or constant
  config.warmup_steps = 20 if ft else 1000  # linear warmup from 0
  config.min_lr_ratio = 0.1  # end of the cosine, as a fraction of the peak
  config.weight_decay = 0.0 if ft else 0.1  # AdamW decoupled decay
  config.adam_b1 = 0.9  # AdamW first moment
  config.adam_b2 = 0.95  # AdamW second moment
  config.adam_eps = 1e-8  # AdamW epsilon
  config.grad_clip_norm = 1.0  # global-norm clip; 0 disables
  config.grad_accum_steps = 8 if ft else 4  # micro-batches per step (16 rows of 2K do not fit 80 GB)
  config.log_every = 50  # steps between metric lines
  config.eval_every = 100 if ft else 1000  # steps between validation losses; 0: never
  config.eval_batches = 8  # validation batches per evaluation
  config.eval_split = "validation"  # split evaluated during training
  config.checkpoint_every = 100 if ft else 1000  # steps between checkpoints; 0: end only
  config.keep_checkpoints = 3  # newest checkpoints kept
  config.async_checkpointing = True  # write checkpoints in the background
  config.init_from = ml_collections.config_dict.placeholder(str)  # a run dir or hf:<dir>; None: scratch
  config.mesh_shape = (-1, 1, 1)  # data x fsdp x tensor devices; -1: the rest
  config.tensorboard = True  # also write TensorBoard events
  return config
