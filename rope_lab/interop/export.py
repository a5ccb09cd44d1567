"""A model written out for other tools: a Hugging Face directory or a GGUF file.

``export(source, out_dir, format=...)`` takes a rope_lab training run (its work directory:
the newest checkpoint, whose parameters hold the merged weights of a LoRA run), a Hugging
Face directory (``hf:<dir>``) or a GGUF file (``gguf:<file>``), optionally under another
encoding, and writes

* ``format="hf"``: ``config.json`` (Llama, Mistral with a sliding window, Qwen2 with qkv
  biases) whose ``rope_parameters`` transformers turns into the same rotary tables
  (``hf_rope.encoding_to_hf``; an encoding it has no ``rope_type`` for is a ConfigError
  naming it), ``model.safetensors`` in float32, and the tokenizer (``tokenizer.json`` and
  ``tokenizer_config.json``). ``transformers.AutoModelForCausalLM`` loads it with rope_lab's
  logits.
* ``format="gguf"``: ``model.gguf`` as llama.cpp's converter writes a llama model: float32
  tensors, q/k rows in llama.cpp's order (``gguf.permute_rows``), the rope settings GGUF
  has keys for (none, linear, and YaRN with the paper's ramp and temperature), and the
  tokenizer as ``tokenizer.ggml.*`` metadata.

Tokenizers: a GGUF source's metadata is copied as it is; a ``tokenizer.json`` (byte-level
BPE) is written as it is for Hugging Face and converted for GGUF; rope_lab's byte
tokenizer becomes a byte-level BPE with no merges (id = byte) plus its two special tokens,
for Hugging Face only (GGUF cannot store an empty merge list). SentencePiece tokenizers
are refused (``with_tokenizer=False`` writes the model alone).

``max_position_embeddings`` (the length the exported config advertises): the length the
weights were trained at (a run's rows or PoSE target, a loaded model's own value, the
larger of the two for a run started from one), or the extended length original x factor
of YaRN, LongRoPE and Llama 3 where that is longer; Dynamic NTK needs its original length
there (transformers reads it from that field).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from rope_lab import pe
from rope_lab.errors import ConfigError
from rope_lab.interop import gguf as gguf_io
from rope_lab.interop import hf
from rope_lab.interop.hf_rope import HFConfigError, encoding_to_hf
from rope_lab.model.skeleton import ModelConfig

FORMATS = ("hf", "gguf")
GGUF_FILENAME = "model.gguf"
HF_PREFIX, GGUF_PREFIX = "hf:", "gguf:"
BYTE_SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>")  # rope_lab's byte tokenizer: ids 256 and 257
# GGUF token types (llama.cpp's llama_token_type): normal, control (special), user-defined.
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


@dataclasses.dataclass(frozen=True)
class Exportable:
  """What an export writes: the model, where its tokenizer comes from and its context length.

  ``tokenizer``: ``"byte"``, ``"hf:<dir>"``, ``"gguf:<file>"``, a SentencePiece ``.model``
  path, or None (none known).
  """

  model: hf.HFModel
  tokenizer: str | None
  trained_length: int


# ----------------------------------------------------------------------------- sources


def _run_tokenizer(workdir: str) -> str | None:
  path = os.path.join(workdir, "tokenizer_spec.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    spec = json.load(f)
  if spec.get("kind") == "hf":
    return spec["source"]
  if spec.get("kind") == "sentencepiece":
    return spec.get("model_path")
  return spec.get("kind")


def _source_length(init_from: str | None) -> int:
  """max_position_embeddings of the hf:/gguf: checkpoint a run started from (0: none)."""
  if init_from and init_from.startswith(HF_PREFIX):
    return int(hf.read_config(init_from[len(HF_PREFIX):]).get("max_position_embeddings") or 0)
  if init_from and init_from.startswith(GGUF_PREFIX) and os.path.isfile(init_from[len(GGUF_PREFIX):]):
    return int(gguf_io.hf_config(gguf_io.read_file(init_from[len(GGUF_PREFIX):]))["max_position_embeddings"])
  return 0


def load_source(source: str, *, encoding: pe.Encoding | None = None) -> Exportable:
  """A run directory, ``hf:<dir>`` or ``gguf:<file>`` as an :class:`Exportable`;
  ``encoding`` replaces the one it was trained or saved with."""
  if source.startswith(GGUF_PREFIX):
    path = source[len(GGUF_PREFIX):]
    model = gguf_io.load(path)
    exportable = Exportable(model, GGUF_PREFIX + path, int(model.hf_config["max_position_embeddings"]))
  elif source.startswith(HF_PREFIX):
    directory = source[len(HF_PREFIX):]
    model = hf.load(directory)
    tokenizer = HF_PREFIX + directory if os.path.isfile(os.path.join(directory, "tokenizer.json")) else None
    exportable = Exportable(model, tokenizer, int(model.hf_config.get("max_position_embeddings") or 0))
  else:
    from rope_lab.evaluate import runs  # pylint: disable=g-import-not-at-top
    run = runs.load_run(source)
    train = run.exp.train
    model = hf.HFModel(run.model, run.params, run.encoding, {}, rotary_layout=run.encoding.layout_name())
    length = max(train.seq_len, train.pose_target_length, _source_length(train.init_from))
    exportable = Exportable(model, _run_tokenizer(source), length)
  if encoding is not None:
    exportable = dataclasses.replace(exportable, model=exportable.model.with_encoding(encoding))
  return exportable


def max_position_embeddings(encoding: pe.Encoding, trained_length: int) -> int:
  """The context length an exported config advertises (see the module docstring)."""
  original = getattr(encoding, "original_max_position_embeddings", None)
  if encoding.name == "dynamic_ntk":
    return int(original)
  factor = encoding.extension_ratio() if encoding.name == "longrope" else getattr(encoding, "factor", None)
  if encoding.name in ("yarn", "longrope", "llama3") and original and factor:
    return max(trained_length, int(round(original * factor)))
  return max(trained_length, 1)


# ----------------------------------------------------------------------------- weights


def check_llama_shaped(cfg: ModelConfig) -> None:
  """Raises ConfigError naming the first ModelConfig field transformers' Llama cannot express."""
  for field, ok, want in (("norm", cfg.norm == "rms", "'rms'"), ("mlp", cfg.mlp == "swiglu", "'swiglu'"),
                          ("logit_soft_cap", cfg.logit_soft_cap is None, "None"),
                          ("embedding_multiplier", cfg.embedding_multiplier == 1.0, "1.0")):
    if not ok:
      raise ConfigError(f"export: ModelConfig.{field}={getattr(cfg, field)!r} has no Llama equivalent "
                        f"(needs {want})")


def _half_order(head_dim: int) -> np.ndarray:
  """Per-head permutation taking interleaved pairs (2i, 2i + 1) to rotate-half pairs (i, i + Dh/2)."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def half_layout(model: hf.HFModel) -> hf.HFModel:
  """``model`` with its q/k weights in the rotate-half order (what transformers rotates).

  Weights kept in llama.cpp's interleaved order (``gguf.load(rotary_layout="interleaved")``,
  or a run trained with ``layout="interleaved"``) get their q/k output dimensions permuted
  per head and the encoding's layout set to ``"half"``: the same function.
  """
  enc = model.encoding
  if not enc.rotary_dim(model.config.head_dim) or enc.layout_name() == "half":
    return model
  if enc.rotary_dim(model.config.head_dim) != model.config.head_dim:
    raise ConfigError(f"export: encoding {enc.name!r} rotates {enc.rotary_fraction} of each head in the "
                      "interleaved layout; only full rotary weights can be reordered for rotate-half")
  order = _half_order(model.config.head_dim)
  params = {**model.params}
  for name, layer in model.params.items():
    if not name.startswith("layers_"):
      continue
    attn = dict(layer["attn"])
    for proj in ("q", "k"):
      attn[proj] = {key: np.asarray(value)[..., order] if key in ("kernel", "bias") else value
                    for key, value in attn[proj].items()}
    params[name] = {**layer, "attn": attn}
  return dataclasses.replace(model, params=params, encoding=dataclasses.replace(enc, layout="half"),
                             rotary_layout="half")


# ----------------------------------------------------------------------------- tokenizers


@dataclasses.dataclass
class _Tokenizer:
  """A tokenizer ready to write: the tokenizers object and its special token ids."""

  tokenizer: Any  # tokenizers.Tokenizer
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None
  chat_template: str | None = None


def byte_tokenizer():
  """rope_lab's byte tokenizer as a ``tokenizers.Tokenizer``: byte b is token b (GPT-2's
  printable stand-in character), no merges; ``<|pad|>`` is 256 and ``<|endoftext|>`` 257."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from rope_lab.data.tokenizers import _byte_level_decoder  # pylint: disable=g-import-not-at-top
  result = Tokenizer(models.BPE(vocab=_byte_level_decoder(), merges=[], fuse_unk=False, byte_fallback=False))
  result.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  result.decoder = decoders.ByteLevel()
  result.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in BYTE_SPECIAL_TOKENS])
  return result


def _read_tokenizer(spec: str) -> _Tokenizer:
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  if spec == "byte":
    return _Tokenizer(byte_tokenizer(), None, 257, 256)
  if spec.startswith(GGUF_PREFIX):
    path = spec[len(GGUF_PREFIX):]
    fields = gguf_io._reader(path).fields  # pylint: disable=protected-access
    template = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else None
    ids = {name: gguf_io.special_token_id(path, name) for name in ("bos", "eos", "padding")}
    return _Tokenizer(gguf_io.tokenizer(path), ids["bos"], ids["eos"], ids["padding"], template)
  if spec.startswith(HF_PREFIX):
    from rope_lab.data.tokenizers import HFTokenizer  # pylint: disable=g-import-not-at-top
    directory = spec[len(HF_PREFIX):]
    ours = HFTokenizer(spec)
    settings = {}
    if os.path.isfile(os.path.join(directory, "tokenizer_config.json")):
      with open(os.path.join(directory, "tokenizer_config.json"), encoding="utf-8") as f:
        settings = json.load(f)
    tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))

    def token_id(key: str, default: int | None) -> int | None:
      token = settings.get(key)
      token = token.get("content") if isinstance(token, dict) else token
      found = tokenizer.token_to_id(token) if token else None
      return default if found is None else found

    return _Tokenizer(tokenizer, token_id("bos_token", None), token_id("eos_token", ours.eod_id),
                      token_id("pad_token", ours.pad_id), settings.get("chat_template"))
  raise ConfigError(f"export: tokenizer {spec!r} cannot be exported (byte, hf:<dir> and gguf:<file> "
                    "tokenizers can); pass with_tokenizer=False to write the model alone")


def _write_hf_tokenizer(out_dir: str, tok: _Tokenizer, max_length: int) -> dict[str, int]:
  """tokenizer.json + tokenizer_config.json; returns the special ids for config.json."""
  tok.tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
  name = lambda i: tok.tokenizer.id_to_token(i) if i is not None else None
  settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "bos_token": name(tok.bos_id), "eos_token": name(tok.eos_id), "pad_token": name(tok.pad_id),
              "add_bos_token": False, "clean_up_tokenization_spaces": False}
  if tok.chat_template:
    settings["chat_template"] = tok.chat_template
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({k: v for k, v in settings.items() if v is not None}, f, indent=1)
  return {key: value for key, value in (("bos_token_id", tok.bos_id), ("eos_token_id", tok.eos_id),
                                        ("pad_token_id", tok.pad_id)) if value is not None}


def _pre_tokenizer_kind(tokenizer) -> str:
  """llama.cpp's ``tokenizer.ggml.pre`` name of a tokenizers pre-tokenizer (those gguf.py reads)."""
  from tokenizers import Tokenizer, models  # pylint: disable=g-import-not-at-top
  serialized = lambda t: json.loads(t.to_str()).get("pre_tokenizer")
  want = serialized(tokenizer)
  for kind in ("gpt-2", "smollm", "llama-bpe"):
    probe = Tokenizer(models.BPE())
    probe.pre_tokenizer = gguf_io._pre_tokenizer(kind, "export")  # pylint: disable=protected-access
    if serialized(probe) == want:
      return kind
  raise ConfigError(f"export: the tokenizer's pre-tokenizer {json.dumps(want)[:200]} has no llama.cpp name "
                    "(supported: gpt-2, smollm, llama-bpe); export format='hf' instead")


def _ggml_vocabulary(tokenizer) -> dict[str, Any]:
  """tokens, token types and merges of a byte-level BPE ``tokenizers.Tokenizer`` for GGUF."""
  spec = json.loads(tokenizer.to_str())
  model = spec.get("model") or {}
  if model.get("type") != "BPE":
    raise ConfigError(f"export: a GGUF tokenizer must be byte-level BPE; this one is {model.get('type')!r}")
  size = tokenizer.get_vocab_size(with_added_tokens=True)
  tokens: list[str | None] = [None] * size
  for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
    tokens[i] = token
  if any(t is None for t in tokens):
    raise ConfigError("export: the tokenizer's ids are not contiguous; GGUF lists one token per id")
  types = [NORMAL] * size
  for added in spec.get("added_tokens", []):
    types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
  return {"tokens": tokens, "types": types, "merges": merges}


def _add_gguf_tokenizer(writer, spec: str) -> None:
  import gguf  # pylint: disable=g-import-not-at-top
  if spec.startswith(GGUF_PREFIX):  # llama.cpp's own fields, copied as they are
    for key, field in gguf_io._reader(spec[len(GGUF_PREFIX):]).fields.items():  # pylint: disable=protected-access
      if key.startswith("tokenizer."):
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    return
  if spec == "byte":  # a BPE without merges: GGUF stores no empty arrays, and readers require the merges
    raise ConfigError("export: the byte tokenizer has no GGUF form (a BPE without merges); export "
                      "format='hf', or pass with_tokenizer=False")
  tok = _read_tokenizer(spec)
  pre = _pre_tokenizer_kind(tok.tokenizer)
  vocabulary = _ggml_vocabulary(tok.tokenizer)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(vocabulary["tokens"])
  writer.add_token_types(vocabulary["types"])
  writer.add_token_merges(vocabulary["merges"])
  writer.add_add_bos_token(False)
  for token_id, add in ((tok.bos_id, writer.add_bos_token_id), (tok.eos_id, writer.add_eos_token_id),
                        (tok.pad_id, writer.add_pad_token_id)):
    if token_id is not None:
      add(token_id)
  if tok.chat_template:
    writer.add_chat_template(tok.chat_template)


# ----------------------------------------------------------------------------- writers


def write_hf(out_dir: str, model: hf.HFModel, *, max_positions: int, tokenizer: str | None) -> None:
  """config.json, model.safetensors and (``tokenizer`` not None) the tokenizer files."""
  check_llama_shaped(model.config)
  model = half_layout(model)
  os.makedirs(out_dir, exist_ok=True)
  hf.save_pretrained(out_dir, model.config, model.params, model.encoding,
                     max_position_embeddings=max_positions)
  if tokenizer is None:
    return
  special_ids = _write_hf_tokenizer(out_dir, _read_tokenizer(tokenizer), max_positions)
  path = os.path.join(out_dir, "config.json")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  with open(path, "w", encoding="utf-8") as f:
    json.dump({**config, **special_ids}, f, indent=1)


def gguf_rope(encoding: pe.Encoding) -> dict[str, Any]:
  """The GGUF rope metadata that reads back as ``encoding``; ConfigError naming what cannot."""
  if encoding.name not in ("rope", "pi", "yarn"):
    raise ConfigError(f"export: encoding {encoding.name!r} has no GGUF rope scaling that rope_lab's and "
                      "llama.cpp's readers share (rope, pi and yarn do); export format='hf' instead")
  if encoding.rotary_fraction != 1.0:
    raise ConfigError(f"export: encoding {encoding.name!r} with rotary_fraction={encoding.rotary_fraction}: "
                      "GGUF export writes full rotary only")
  out: dict[str, Any] = {"base": float(encoding.base), "type": {"rope": "none", "pi": "linear"}.get(encoding.name,
                                                                                                     "yarn")}
  if encoding.name != "rope":
    out["factor"] = float(encoding.factor)
  if encoding.name == "yarn":
    defaults = pe.make("yarn", factor=encoding.factor,
                       original_max_position_embeddings=encoding.original_max_position_embeddings,
                       base=encoding.base, layout=encoding.layout)
    changed = [k for k in ("beta_fast", "beta_slow", "truncate", "attention_factor", "mscale", "mscale_all_dim")
               if getattr(encoding, k) != getattr(defaults, k)]
    if changed:
      raise ConfigError(f"export: yarn with {', '.join(f'{k}={getattr(encoding, k)!r}' for k in changed)}: GGUF "
                        "export writes the paper's YaRN only (beta_fast 32, beta_slow 1, its temperature)")
    out["original"] = int(encoding.original_max_position_embeddings)
  return out


def write_gguf(path: str, model: hf.HFModel, *, max_positions: int, tokenizer: str | None) -> None:
  """A llama GGUF file (float32) of ``model`` (see the module docstring)."""
  import gguf  # pylint: disable=g-import-not-at-top
  cfg = model.config
  check_llama_shaped(cfg)
  if cfg.qkv_bias or cfg.sliding_window is not None:
    raise ConfigError("export: GGUF export writes the llama architecture: no qkv_bias, no sliding_window")
  rope = gguf_rope(model.encoding)
  model = half_layout(model)
  writer = gguf.GGUFWriter(path + ".tmp", "llama")
  writer.add_block_count(cfg.n_layers)
  writer.add_context_length(max_positions)
  writer.add_embedding_length(cfg.d_model)
  writer.add_feed_forward_length(cfg.mlp_dim)
  writer.add_head_count(cfg.n_heads)
  writer.add_head_count_kv(cfg.n_kv_heads)
  writer.add_key_length(cfg.head_dim)
  writer.add_value_length(cfg.head_dim)
  writer.add_rope_freq_base(rope["base"])
  writer.add_rope_dimension_count(cfg.head_dim)
  writer.add_layer_norm_rms_eps(cfg.norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  writer.add_file_type(gguf.LlamaFileType.ALL_F32)
  if rope["type"] != "none":
    writer.add_rope_scaling_type(gguf.RopeScalingType(rope["type"]))
    writer.add_rope_scaling_factor(rope["factor"])
  if rope["type"] == "yarn":
    writer.add_rope_scaling_orig_ctx_len(rope["original"])
  if tokenizer is not None:
    _add_gguf_tokenizer(writer, tokenizer)
  heads = {"attn_q": cfg.n_heads, "attn_k": cfg.n_kv_heads}
  for hf_name, value in hf.torch_tensors(cfg, model.params).items():
    name = gguf_io.gguf_tensor_name(hf_name)
    kind = name.split(".")[-2]
    writer.add_tensor(name, gguf_io.permute_rows(value, heads[kind]) if kind in heads else value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- entry


def export(source: str | Exportable, out_dir: str, *, format: str = "hf",  # pylint: disable=redefined-builtin
           encoding: pe.Encoding | None = None, with_tokenizer: bool = True) -> str:
  """Writes ``source`` (a run directory, ``hf:<dir>``, ``gguf:<file>`` or an Exportable) to
  ``out_dir``; returns the directory (hf) or the file (gguf) written."""
  if format not in FORMATS:
    raise ConfigError(f"export: format must be one of {FORMATS}, got {format!r}")
  item = source if isinstance(source, Exportable) else load_source(source, encoding=encoding)
  if isinstance(source, Exportable) and encoding is not None:
    item = dataclasses.replace(item, model=item.model.with_encoding(encoding))
  if item.model.encoding.name == "per_layer":
    raise HFConfigError("export: per_layer encodings belong to other architectures (Gemma 3, Llama 4)")
  positions = max_position_embeddings(item.model.encoding, item.trained_length)
  if format == "hf":
    encoding_to_hf(half_layout(item.model).encoding, max_position_embeddings=positions)  # refuse before writing
  tokenizer = item.tokenizer if with_tokenizer else None
  if with_tokenizer and tokenizer is None:
    raise ConfigError("export: the source has no tokenizer to export; pass with_tokenizer=False")
  os.makedirs(out_dir, exist_ok=True)
  if format == "hf":
    write_hf(out_dir, item.model, max_positions=positions, tokenizer=tokenizer)
    return out_dir
  path = os.path.join(out_dir, GGUF_FILENAME)
  write_gguf(path, item.model, max_positions=positions, tokenizer=tokenizer)
  return path
