"""GGUF checkpoints (llama.cpp's format) in the rope_lab skeleton.

``load(path)`` reads the metadata and tensors with the ``gguf`` package (ggml's own
reader, numpy only), dequantizes each tensor to float32, maps the llama-architecture
names onto the skeleton and returns the same :class:`rope_lab.interop.hf.HFModel` as
``hf.load``. The metadata is turned into the config.json transformers would write, so
the architecture and rope settings go through the one Hugging Face path.

llama.cpp's converter permutes the rows of the q and k projections of each head so that
rotary pairs are adjacent: GGUF row 2i holds Hugging Face row i and row 2i+1 holds row
i + Dh/2 (``llama.cpp/convert_hf_to_gguf.py``, ``LlamaModel.permute``). Two equivalent
ways to read it (``rotary_layout``):

* ``"half"`` (default): undo the permutation and use the rotate-half pairing, exactly
  Hugging Face's weights;
* ``"interleaved"``: keep GGUF's rows and rotate adjacent pairs (RoFormer/GPT-J pairing);
  encodings applied later must then use ``layout="interleaved"`` too.

GGUF name -> Hugging Face name::

  token_embd.weight -> model.embed_tokens.weight    output_norm.weight -> model.norm.weight
  output.weight -> lm_head.weight (absent: tied embeddings)
  blk.{i}.attn_norm / ffn_norm -> model.layers.{i}.input_layernorm / post_attention_layernorm
  blk.{i}.attn_q / attn_k / attn_v / attn_output -> ...self_attn.q_proj / k_proj / v_proj / o_proj
  blk.{i}.ffn_gate / ffn_up / ffn_down -> ...mlp.gate_proj / up_proj / down_proj
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from rope_lab import pe
from rope_lab.errors import CheckpointError, ConfigError, check
from rope_lab.interop import hf
from rope_lab.interop.hf_rope import encoding_from_hf
from rope_lab.model.skeleton import ModelConfig

ARCHITECTURES = ("llama",)
ROTARY_LAYOUTS = ("half", "interleaved")
# Tensor types this loader dequantizes (gguf.quants does the work; tests check it
# against ggml's block formulas).
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
# GGUF rope scaling type -> Hugging Face rope_type.
ROPE_SCALING = {"none": "default", "linear": "linear", "yarn": "yarn"}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


class GGUFCheckpointError(CheckpointError):
  """A GGUF file, field, tensor or tensor type cannot be used; the message names it."""


_HF_GLOBAL = {hf_name: name for name, hf_name in _GLOBAL_NAMES.items()}
_HF_LAYER = {hf_name: name for name, hf_name in _LAYER_NAMES.items()}


def gguf_tensor_name(hf_name: str) -> str:
  """The GGUF name llama.cpp gives a Hugging Face llama tensor."""
  if hf_name in _HF_GLOBAL:
    return _HF_GLOBAL[hf_name]
  parts = hf_name.split(".")
  module = ".".join(parts[3:-1])
  if len(parts) < 5 or parts[:2] != ["model", "layers"] or module not in _HF_LAYER:
    raise GGUFCheckpointError(f"no GGUF name for tensor {hf_name}")
  return f"blk.{parts[2]}.{_HF_LAYER[module]}.{parts[-1]}"


def unpermute_rows(w_RxI: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation: per head, rows (0, Dh/2, 1, Dh/2+1, ...) -> (0, 1, ...)."""
  rows = w_RxI.shape[0]
  head_dim = rows // n_heads
  return w_RxI.reshape(n_heads, head_dim // 2, 2, *w_RxI.shape[1:]).swapaxes(1, 2).reshape(w_RxI.shape)


def permute_rows(w_RxI: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's permutation (the inverse of ``unpermute_rows``), as its converter writes q/k."""
  rows = w_RxI.shape[0]
  head_dim = rows // n_heads
  return w_RxI.reshape(n_heads, 2, head_dim // 2, *w_RxI.shape[1:]).swapaxes(1, 2).reshape(w_RxI.shape)


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass
class GGUFFile:
  """The metadata and tensors of one GGUF file (tensors stay memory-mapped until read)."""

  path: str
  fields: dict[str, Any]
  tensors: dict[str, Any]  # name -> gguf.ReaderTensor

  def field(self, key: str, default: Any = ..., kind=None) -> Any:
    if key not in self.fields:
      if default is ...:
        raise GGUFCheckpointError(f"{self.path}: metadata field {key!r} is required")
      return default
    value = self.fields[key]
    if kind is not None and not isinstance(value, kind):
      raise GGUFCheckpointError(f"{self.path}: metadata field {key!r} is {value!r}, expected {kind}")
    return value

  def read(self, name: str) -> np.ndarray:
    """Tensor ``name`` dequantized to float32 in numpy (torch) order: [rows, columns]."""
    from gguf import quants  # pylint: disable=g-import-not-at-top
    tensor = self.tensors[name]
    kind = tensor.tensor_type.name
    if kind not in QUANT_TYPES:
      raise GGUFCheckpointError(f"{self.path}: tensor {name} has type {kind}; supported: {', '.join(QUANT_TYPES)}")
    shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists the fastest axis first
    if kind == "F32":
      values = np.asarray(tensor.data, np.float32)
    else:
      values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return np.asarray(values, np.float32).reshape(shape)


def _reader(path: str):
  """gguf's reader of ``path``, parsed once per version of the file.

  Parsing the metadata (about 100K vocabulary and merge strings for SmolLM2) takes seconds,
  and loading a model and its tokenizer reads the same file several times; the reader only
  memory-maps the tensors, read-only. The key includes the size and modification time, so a
  file replaced on disk is parsed again.
  """
  if not os.path.isfile(path):
    raise GGUFCheckpointError(f"GGUF file {path} does not exist")
  stat = os.stat(path)
  return _parsed_reader(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _parsed_reader(path: str, size: int, mtime_ns: int):
  del size, mtime_ns  # cache key only
  import gguf  # pylint: disable=g-import-not-at-top
  try:
    return gguf.GGUFReader(path, "r")
  except (ValueError, OSError) as e:
    raise GGUFCheckpointError(f"{path} is not a readable GGUF file: {e}") from e


def read_file(path: str) -> GGUFFile:
  reader = _reader(path)
  fields = {}
  for key, field in reader.fields.items():
    if key.startswith("tokenizer.ggml.") and key.rsplit(".", 1)[-1] in ("tokens", "merges", "token_type", "scores"):
      continue  # large arrays read only by the tokenizer
    fields[key] = field.contents()
  return GGUFFile(path, fields, {t.name: t for t in reader.tensors})


def hf_config(file: GGUFFile) -> dict[str, Any]:
  """The config.json transformers would hold for this GGUF (llama architecture)."""
  arch = file.field("general.architecture", kind=str)
  if arch not in ARCHITECTURES:
    raise GGUFCheckpointError(f"{file.path}: metadata field 'general.architecture' is {arch!r}; "
                              f"supported: {', '.join(ARCHITECTURES)}")
  key = lambda name: f"{arch}.{name}"
  hidden = int(file.field(key("embedding_length")))
  heads = int(file.field(key("attention.head_count")))
  head_dim = int(file.field(key("attention.key_length"), hidden // heads))
  rotary_dim = int(file.field(key("rope.dimension_count"), head_dim))
  if rotary_dim != head_dim:
    raise GGUFCheckpointError(f"{file.path}: metadata field {key('rope.dimension_count')!r} is {rotary_dim}; "
                              f"only full rotary (= head dim {head_dim}) is supported")
  vocab = file.field(key("vocab_size"), None)
  if vocab is None:
    vocab = int(file.tensors["token_embd.weight"].shape[-1]) if "token_embd.weight" in file.tensors else None
  context = int(file.field(key("context_length")))
  rope: dict[str, Any] = {"rope_theta": float(file.field(key("rope.freq_base"), 10000.0))}
  scaling = str(file.field(key("rope.scaling.type"), "none"))
  if scaling not in ROPE_SCALING:
    raise GGUFCheckpointError(f"{file.path}: metadata field {key('rope.scaling.type')!r} is {scaling!r}; "
                              f"supported: {', '.join(ROPE_SCALING)}")
  rope["rope_type"] = ROPE_SCALING[scaling]
  if scaling != "none":
    rope["factor"] = float(file.field(key("rope.scaling.factor")))
  if scaling == "yarn":
    rope["original_max_position_embeddings"] = int(file.field(key("rope.scaling.original_context_length")))
  if "rope_freqs.weight" in file.tensors:
    raise GGUFCheckpointError(f"{file.path}: tensor rope_freqs.weight (per-frequency rope factors) is not supported")
  return {
      "model_type": arch, "architectures": [hf.ARCHITECTURES[arch]], "vocab_size": vocab,
      "hidden_size": hidden, "intermediate_size": int(file.field(key("feed_forward_length"))),
      "num_hidden_layers": int(file.field(key("block_count"))), "num_attention_heads": heads,
      "num_key_value_heads": int(file.field(key("attention.head_count_kv"), heads)), "head_dim": head_dim,
      "rms_norm_eps": float(file.field(key("attention.layer_norm_rms_epsilon"))), "hidden_act": "silu",
      "tie_word_embeddings": "output.weight" not in file.tensors, "max_position_embeddings": context,
      "rope_parameters": rope,
  }


# ModelConfig fields the file fixes; the others (attention path, chunk size, dtype, ...)
# may be passed to ``load`` as keyword overrides.
_FIELDS_FROM_FILE = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim", "mlp",
                     "norm", "norm_eps", "tied_embeddings", "qkv_bias")


def _check_overrides(config_overrides: dict[str, Any]) -> None:
  """Keyword overrides must be ModelConfig fields the file does not fix (else a TypeError deep down)."""
  settable = sorted(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _FIELDS_FROM_FILE)
  for name in config_overrides:
    if name in _FIELDS_FROM_FILE:
      raise ConfigError(f"gguf.load: parameter {name!r} is read from the file and cannot be overridden"
                        + ("; pass n_layers=N to load only the first N blocks" if name == "n_layers" else ""))
    if name not in settable:
      raise ConfigError(f"gguf.load: unknown parameter {name!r}; keyword overrides of the model config are "
                        f"{', '.join(settable)}")


def _block_index(name: str) -> int | None:
  """i for a tensor ``blk.{i}.*``, None for the global ones."""
  parts = name.split(".")
  return int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else None


def load(path: str, *, encoding: pe.Encoding | None = None, rotary_layout: str = "half", strict: bool = True,
         n_layers: int | None = None, **config_overrides) -> hf.HFModel:
  """Loads a llama-architecture GGUF file as ``hf.load`` loads a Hugging Face directory.

  ``encoding`` replaces the file's rope settings; with ``rotary_layout="interleaved"`` it
  must use the interleaved pairing (the default encoding from the file does).
  ``strict=False`` turns tensors the model does not read into a warning.
  ``n_layers=N`` reads only the first N blocks (with the embedding, final norm and head):
  a debugging and test aid (quick to load and compile; its outputs are not the model's),
  the other blocks are neither read nor reported as unused.
  Other keywords override ModelConfig fields the file does not fix (``attention``,
  ``chunk_size``, ``compute_dtype``, ...); any other keyword is a ConfigError naming it.
  """
  if rotary_layout not in ROTARY_LAYOUTS:
    raise GGUFCheckpointError(f"rotary_layout must be one of {ROTARY_LAYOUTS}, got {rotary_layout!r}")
  _check_overrides(config_overrides)
  file = read_file(path)
  config = hf_config(file)
  if n_layers is not None:
    blocks = config["num_hidden_layers"]
    check(isinstance(n_layers, int) and not isinstance(n_layers, bool) and 1 <= n_layers <= blocks,
          "gguf.load: parameter n_layers", f"an int in [1, {blocks}] (the file's block count)", n_layers)
    config = {**config, "num_hidden_layers": n_layers}
  cfg = hf.model_config_from_hf(config, **config_overrides)
  if encoding is None:
    encoding = encoding_from_hf(config)
    if rotary_layout == "interleaved":
      encoding = dataclasses.replace(encoding, layout="interleaved")
  hooks = encoding.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=1)

  mapping = {path: (gguf_tensor_name(hf_name), transform)
             for path, (hf_name, transform) in hf.weight_map(cfg).items()}
  heads = {"attn_q": cfg.n_heads, "attn_k": cfg.n_kv_heads}

  def read(name: str) -> np.ndarray:
    try:
      value = file.read(name)
    except ValueError as e:  # gguf's own complaint about a malformed block
      raise GGUFCheckpointError(f"{path}: tensor {name} cannot be dequantized: {e}") from e
    kind = name.split(".")[-2]
    if rotary_layout == "half" and kind in heads:
      return unpermute_rows(value, heads[kind])
    return value

  skipped = range(cfg.n_layers, int(file.field(f"{config['model_type']}.block_count")))  # n_layers < the file's
  names = [name for name in file.tensors if _block_index(name) not in skipped]
  params = hf.assemble_params(path, names, read, cfg, hooks, mapping, strict=strict, error=GGUFCheckpointError)
  return hf.HFModel(cfg, params, encoding, config, rotary_layout=rotary_layout)


# ----------------------------------------------------------------------------- tokenizer

# Regex of llama.cpp's "llama-bpe" pre-tokenizer (Llama 3), for files that name it.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(kind: str, path: str):
  """llama.cpp's pre-tokenizer ``tokenizer.ggml.pre`` as a Hugging Face pre-tokenizer."""
  from tokenizers import Regex, pre_tokenizers  # pylint: disable=g-import-not-at-top
  gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if kind in ("default", "gpt-2"):
    return gpt2
  if kind == "smollm":  # llama.cpp: every digit alone, then GPT-2's split
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
  if kind in ("llama-bpe", "llama3"):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  raise GGUFCheckpointError(f"{path}: metadata field 'tokenizer.ggml.pre' is {kind!r}; supported: "
                            "default, gpt-2, smollm, llama-bpe, llama3")


def tokenizer(path: str):
  """The file's byte-level BPE vocabulary and merges as a Hugging Face ``tokenizers.Tokenizer``.

  Control tokens (``tokenizer.ggml.token_type`` 3, e.g. ``<|endoftext|>``) are special
  tokens matched whole; user-defined ones (type 4) are added tokens.
  """
  from tokenizers import AddedToken, Tokenizer, decoders, models  # pylint: disable=g-import-not-at-top
  fields = _reader(path).fields
  read = lambda key, default=...: fields[key].contents() if key in fields else (
      default if default is not ... else _missing(path, key))
  model = read("tokenizer.ggml.model")
  if model != "gpt2":
    raise GGUFCheckpointError(f"{path}: metadata field 'tokenizer.ggml.model' is {model!r}; only 'gpt2' "
                              "(byte-level BPE) is supported")
  tokens = read("tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in read("tokenizer.ggml.merges")]
  types = read("tokenizer.ggml.token_type", [1] * len(tokens))
  result = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                fuse_unk=False, byte_fallback=False))
  result.pre_tokenizer = _pre_tokenizer(read("tokenizer.ggml.pre", "default"), path)
  result.decoder = decoders.ByteLevel()
  result.add_special_tokens([AddedToken(t, special=True, normalized=False)
                             for t, kind in zip(tokens, types) if kind == 3])
  result.add_tokens([AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types) if kind == 4])
  return result


def special_token_id(path: str, name: str) -> int | None:
  """``tokenizer.ggml.<name>_token_id`` (e.g. eos, bos, padding), or None."""
  fields = _reader(path).fields
  key = f"tokenizer.ggml.{name}_token_id"
  return int(fields[key].contents()) if key in fields else None


def _missing(path: str, key: str):
  raise GGUFCheckpointError(f"{path}: metadata field {key!r} is required")
