"""Hugging Face Llama / Mistral / Qwen2 checkpoints in the rope_lab skeleton, and back.

``load(model_dir)`` reads config.json and safetensors (single file or sharded with an
index) with the safetensors numpy API: no PyTorch, no network. Each tensor is mapped to
the skeleton's layout (torch Linear [out, in] -> [in, heads, head_dim]) and placed on
the mesh with the run's shardings as it is read, so a large checkpoint never has to sit
whole on one device. ``save_pretrained`` writes a rope_lab model as a Hugging Face
directory that transformers loads with the same logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from rope_lab import pe
from rope_lab.errors import CheckpointError, ConfigError
from rope_lab.interop.hf_rope import HFConfigError, encoding_from_hf, encoding_to_hf
from rope_lab.model.skeleton import ModelConfig, Transformer

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


class HFCheckpointError(CheckpointError):
  """A checkpoint file or weight is missing or malformed; the message names it."""


# ----------------------------------------------------------------------------- config


def read_config(model_dir: str) -> dict[str, Any]:
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    raise HFCheckpointError(f"no config.json in {model_dir}")
  with open(path) as f:
    return json.load(f)


def model_config_from_hf(config: dict[str, Any], **overrides) -> ModelConfig:
  """config.json -> ModelConfig; unsupported architectures and switches are errors naming the field."""
  model_type = config.get("model_type")
  if model_type not in ARCHITECTURES:
    raise HFConfigError(f"config: field 'model_type' is {model_type!r}; supported: {', '.join(ARCHITECTURES)}")
  if config.get("hidden_act", "silu") != "silu":
    raise HFConfigError(f"config: field 'hidden_act' is {config['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
  for flag in ("attention_bias", "mlp_bias"):
    if config.get(flag):
      raise HFConfigError(f"config: field {flag!r} is true; the skeleton has no o_proj / MLP biases")
  try:
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(config["vocab_size"]),
        d_model=hidden,
        n_layers=int(config["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        mlp_dim=int(config["intermediate_size"]),
        mlp="swiglu",
        norm="rms",
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2",
        # A pretrained model's identical blocks compile once (rope_lab.model.layer_scan): a 30-layer
        # SmolLM2's decode program compiles in a third of the time; overridable.
        **{"sliding_window": model_sliding_window(config), "scan_layers": True, **overrides},
    )
  except KeyError as e:
    raise HFConfigError(f"config: field {e.args[0]!r} is required") from None


def model_config_for_run(config: dict[str, Any], run_model: ModelConfig) -> ModelConfig:
  """A checkpoint's architecture (its config.json dictionary) with the run's attention path,
  chunk, dtype, masking and layer scan."""
  return model_config_from_hf(
      config, attention=run_model.attention, chunk_size=run_model.chunk_size,
      compute_dtype=run_model.compute_dtype, segment_masking=run_model.segment_masking,
      scan_layers=run_model.scan_layers)


def sliding_window(config: dict[str, Any]) -> int | None:
  """The attention window W transformers would apply (a query sees itself and W - 1 earlier
  tokens), or None. MistralConfig's default is 4096 when config.json omits the field."""
  if config.get("model_type") == "qwen2" and not config.get("use_sliding_window", False):
    return None
  if config.get("model_type") == "mistral":
    return config.get("sliding_window", 4096)
  return config.get("sliding_window")


def window_layers(config: dict[str, Any]) -> list[bool]:
  """Per layer, whether transformers applies the sliding window there: every Mistral layer;
  Qwen2's ``layer_types`` (default: the layers from ``max_window_layers`` on)."""
  n_layers = int(config["num_hidden_layers"])
  if sliding_window(config) is None:
    return [False] * n_layers
  if config.get("model_type") != "qwen2":
    return [True] * n_layers
  types = config.get("layer_types")
  if types is None:
    return [i >= int(config.get("max_window_layers", 28)) for i in range(n_layers)]
  return [t == "sliding_attention" for t in types]


def model_sliding_window(config: dict[str, Any]) -> int | None:
  """The window for ``ModelConfig.sliding_window``: W when every layer slides, else None
  (a window on some layers only is not expressed; ``HFModel.logits`` refuses inputs beyond it)."""
  layers = window_layers(config)
  return sliding_window(config) if layers and all(layers) else None


# ----------------------------------------------------------------------------- weights


def weight_map(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[str, Callable[[np.ndarray], np.ndarray]]]:
  """rope_lab parameter path -> (Hugging Face tensor name, transform to our layout)."""
  d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  identity = lambda w: w
  out = {
      ("embed", "embedding"): ("model.embed_tokens.weight", identity),
      ("final_norm", "scale"): ("model.norm.weight", identity),
  }
  if not cfg.tied_embeddings:
    out[("lm_head", "kernel")] = ("lm_head.weight", lambda w: w.T)
  for i in range(cfg.n_layers):
    hf, ours = f"model.layers.{i}", f"layers_{i}"
    out[(ours, "attn_norm", "scale")] = (f"{hf}.input_layernorm.weight", identity)
    out[(ours, "mlp_norm", "scale")] = (f"{hf}.post_attention_layernorm.weight", identity)
    for name, heads in (("q", h), ("k", k), ("v", k)):
      out[(ours, "attn", name, "kernel")] = (f"{hf}.self_attn.{name}_proj.weight",
                                             lambda w, n=heads: w.T.reshape(d, n, dh))
      if cfg.qkv_bias:
        out[(ours, "attn", name, "bias")] = (f"{hf}.self_attn.{name}_proj.bias", lambda b, n=heads: b.reshape(n, dh))
    out[(ours, "attn", "o", "kernel")] = (f"{hf}.self_attn.o_proj.weight", lambda w: w.T.reshape(h, dh, d))
    for name in ("gate", "up", "down"):
      out[(ours, "mlp", name, "kernel")] = (f"{hf}.mlp.{name}_proj.weight", lambda w: w.T)
  return out


def _tensor_files(model_dir: str) -> dict[str, str]:
  """Hugging Face tensor name -> safetensors file holding it."""
  index = os.path.join(model_dir, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      mapping = json.load(f).get("weight_map")
    if not isinstance(mapping, dict):
      raise HFCheckpointError(f"{index}: field 'weight_map' is missing or not a dictionary")
    return {name: os.path.join(model_dir, file) for name, file in mapping.items()}
  single = os.path.join(model_dir, "model.safetensors")
  if not os.path.isfile(single):
    raise HFCheckpointError(f"no model.safetensors or model.safetensors.index.json in {model_dir}")
  with safe_open(single, framework="numpy") as f:
    return {name: single for name in f.keys()}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# Tensors a checkpoint may carry that the skeleton recomputes: old Llama checkpoints store
# the rotary inverse frequencies as a buffer.
DERIVED_TENSOR_SUFFIXES = (".rotary_emb.inv_freq",)


def unused_tensor_report(source: str, unused: list[str], strict: bool,
                         error: type[CheckpointError] = CheckpointError) -> None:
  """Raises CheckpointError (``strict``) or warns naming tensors the model did not read."""
  if not unused:
    return
  unused = sorted(unused)
  message = (f"{source}: {len(unused)} tensor(s) not used by the model: {', '.join(unused[:8])}"
             + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
             + " (a config with fewer layers than the checkpoint, or an lm_head next to tied "
             "embeddings?); pass strict=False to load anyway")
  if strict:
    raise error(message)
  warnings.warn(message, stacklevel=3)


def assemble_params(source: str, names: Iterable[str], read: Callable[[str], np.ndarray], cfg: ModelConfig,
                    hooks: pe.Hooks, mapping, *, shardings=None, strict: bool = True,
                    error: type[CheckpointError] = CheckpointError) -> dict:
  """The float32 parameter tree from a checkpoint's tensors, with names and shapes checked.

  ``names``: every tensor name the checkpoint holds; ``read(name)`` returns one as numpy;
  ``mapping``: rope_lab path -> (checkpoint name, transform), as ``weight_map``.
  ``shardings``: a tree of jax Shardings shaped like the parameters (the training run's);
  each tensor is put straight onto its sharding after it is read and transformed.
  Tensors the mapping does not read are an error (a warning with ``strict=False``).
  """
  names = set(names)
  missing = [name for name, _ in mapping.values() if name not in names]
  if missing:
    raise error(f"{source}: missing weight(s) {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
  used = {name for name, _ in mapping.values()}
  unused_tensor_report(source, [n for n in names - used if not n.endswith(DERIVED_TENSOR_SUFFIXES)], strict,
                       error)
  expected = jax.eval_shape(lambda: nn_unbox_init(cfg, hooks))
  flat_expected = {path: leaf for path, leaf in _flatten(expected)}
  flat_shardings = dict(_flatten(shardings)) if shardings is not None else {}
  params: dict = {}
  for path, (name, transform) in mapping.items():
    raw = read(name)
    want = flat_expected[path].shape
    try:
      value = np.ascontiguousarray(transform(raw.astype(np.float32)))
    except ValueError:  # a reshape that cannot fit: the same report as a plain mismatch
      value = raw
    if value.shape != want:
      raise error(f"{source}: weight {name}: shape {tuple(raw.shape)} does not fit the config "
                            f"(expected {want} after conversion to {'/'.join(path)})")
    sharding = flat_shardings.get(path)
    array = jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)
    _set(params, path, array)
  return params


def load_params(model_dir: str, cfg: ModelConfig, hooks: pe.Hooks, shardings=None, *,
                strict: bool = True) -> dict:
  """Reads every weight of a Hugging Face directory and returns the float32 parameter tree.

  See ``assemble_params`` for ``shardings`` and ``strict``.
  """
  files = _tensor_files(model_dir)
  with contextlib.ExitStack() as stack:
    handles: dict[str, Any] = {}

    def read(name: str) -> np.ndarray:
      file = files[name]
      if file not in handles:
        if not os.path.isfile(file):
          raise HFCheckpointError(f"weight file {file} (listed for {name}) does not exist")
        handles[file] = stack.enter_context(safe_open(file, framework="numpy"))
      return handles[file].get_tensor(name)

    return assemble_params(model_dir, files, read, cfg, hooks, weight_map(cfg), shardings=shardings,
                           strict=strict, error=HFCheckpointError)


def nn_unbox_init(cfg: ModelConfig, hooks: pe.Hooks):
  import flax.linen as nn

  tokens = jnp.zeros((1, 1), jnp.int32)
  return nn.unbox(Transformer(cfg).init(jax.random.key(0), tokens, hooks=hooks))["params"]


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _flatten(value, prefix + (key,))
  else:
    yield prefix, tree


# ----------------------------------------------------------------------------- notebook object


@dataclasses.dataclass
class HFModel:
  """A loaded checkpoint: ``.logits(tokens)``, and the config/params/encoding it wraps."""

  config: ModelConfig
  params: dict
  encoding: pe.Encoding
  hf_config: dict[str, Any]
  # Pairing of rotary dimensions the q/k weights were laid out for: "half" for Hugging
  # Face weights; "interleaved" for GGUF weights kept in llama.cpp's row order.
  rotary_layout: str = "half"

  def __post_init__(self):
    layout = self.encoding.layout_name()
    if self.encoding.rotary_dim(self.config.head_dim) and layout != self.rotary_layout:
      raise ConfigError(f"encoding {self.encoding.name!r} pairs rotary dimensions with layout {layout!r}, but "
                        f"these weights were loaded for layout {self.rotary_layout!r}; make the encoding with "
                        f"layout={self.rotary_layout!r}")

  def with_encoding(self, encoding: pe.Encoding) -> "HFModel":
    """Same weights under another encoding (e.g. YaRN s=4 on a model saved with plain RoPE)."""
    return dataclasses.replace(self, encoding=encoding)

  def hooks(self, seq_len: int) -> pe.Hooks:
    c = self.config
    return self.encoding.hooks(head_dim=c.head_dim, n_heads=c.n_heads, d_model=c.d_model, seq_len=seq_len)

  def logits(self, tokens) -> jax.Array:
    """int32 [B, L] -> float32 [B, L, V]; length-dependent encodings follow L as transformers does."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be int32 [batch, length], got shape {tokens.shape}")
    window = sliding_window(self.hf_config)
    if window is not None and model_sliding_window(self.hf_config) is None and tokens.shape[1] > window:
      raise ValueError(f"length {tokens.shape[1]} exceeds the checkpoint's sliding_window {window}, which "
                       "transformers applies on some layers only (Qwen2 max_window_layers / layer_types); "
                       "the skeleton applies a window on every layer or none")
    return _forward(self.config)(self.params, tokens, self.hooks(tokens.shape[1]))


_FORWARDS: dict[ModelConfig, Callable] = {}


def _forward(cfg: ModelConfig) -> Callable:
  if cfg not in _FORWARDS:
    model = Transformer(cfg)
    _FORWARDS[cfg] = jax.jit(lambda params, tokens, hooks: model.apply({"params": params}, tokens, hooks=hooks))
  return _FORWARDS[cfg]


def load(model_dir: str, *, encoding: pe.Encoding | None = None, shardings=None, strict: bool = True,
         **config_overrides) -> HFModel:
  """Loads a local Hugging Face directory; ``encoding`` replaces the saved rope settings.

  ``strict=False`` turns tensors the model does not read (extra layers, an lm_head next to
  tied embeddings) from a CheckpointError into a warning.
  """
  hf_config = read_config(model_dir)
  cfg = model_config_from_hf(hf_config, **config_overrides)
  encoding = encoding or encoding_from_hf(hf_config)
  hooks = encoding.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=1)
  params = load_params(model_dir, cfg, hooks, shardings, strict=strict)
  return HFModel(cfg, params, encoding, hf_config)


# ----------------------------------------------------------------------------- export


def save_pretrained(out_dir: str, cfg: ModelConfig, params: dict, encoding: pe.Encoding, *,
                    max_position_embeddings: int) -> None:
  """Writes config.json + model.safetensors that transformers loads as Llama (Qwen2 with qkv
  bias; Mistral with a sliding window and no qkv bias)."""
  if cfg.norm != "rms" or cfg.mlp != "swiglu" or cfg.logit_soft_cap is not None:
    raise HFConfigError("export needs norm='rms', mlp='swiglu' and no logit_soft_cap (a Llama-shaped model)")
  rope = encoding_to_hf(encoding, max_position_embeddings=max_position_embeddings)
  model_type = "qwen2" if cfg.qkv_bias else ("mistral" if cfg.sliding_window is not None else "llama")
  config = {
      "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
      "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tied_embeddings,
      "max_position_embeddings": max_position_embeddings, "rope_parameters": rope,
      "torch_dtype": "float32", "dtype": "float32",
  }
  if model_type == "qwen2":
    config["use_sliding_window"] = cfg.sliding_window is not None
    config["sliding_window"] = cfg.sliding_window
    config["max_window_layers"] = 0  # the window, if any, on every layer as in the skeleton
  else:
    config["attention_bias"] = False
    config["mlp_bias"] = False
  if model_type == "mistral":
    config["sliding_window"] = cfg.sliding_window
  tensors = torch_tensors(cfg, params)
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, "model.safetensors.tmp")
  save_file(tensors, tmp, metadata={"format": "pt"})
  os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=1)


def torch_tensors(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
  """Hugging Face tensor name -> float32 numpy tensor in torch's layout (the inverse of ``weight_map``)."""
  tensors = {}
  for path, (hf_name, _) in weight_map(cfg).items():
    value = np.asarray(_get(params, path), np.float32)
    if path[-1] == "kernel" and path[-2] in ("q", "k", "v"):
      value = value.reshape(value.shape[0], -1).T
    elif path[-1] == "kernel" and path[-2] == "o":
      value = value.reshape(-1, value.shape[-1]).T
    elif path[-1] == "bias":
      value = value.reshape(-1)
    elif path[-1] == "kernel":
      value = value.T
    tensors[hf_name] = np.ascontiguousarray(value)
  return tensors


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    if key not in tree:
      raise HFCheckpointError(f"parameter {'/'.join(path)} is missing from the rope_lab parameters")
    tree = tree[key]
  return tree
