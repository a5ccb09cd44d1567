"""Writes tiny llama GGUF files the way llama.cpp's converter does, from transformers models."""

import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType, GGUFWriter, quants

from rope_lab.interop.gguf import gguf_tensor_name, permute_rows

VOCAB = 96


def tiny_llama(tied: bool = False, seed: int = 0) -> transformers.LlamaForCausalLM:
  config = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-5,
      tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
      attn_implementation="eager")
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # norms away from 1 so a mis-mapped norm shows
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
  return model


def write_gguf(model, path: str, *, matrix_type: str = "F32", arch: str = "llama", extra_tensors=None,
               skip=()) -> None:
  """The model as llama.cpp writes it: q/k rows permuted, 2-D weights in ``matrix_type``."""
  c = model.config
  writer = GGUFWriter(path, arch)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_rope_dimension_count(c.head_dim)
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_vocab_size(c.vocab_size)
  writer.add_file_type(0)
  qtype = GGMLQuantizationType[matrix_type]
  for name, tensor in model.state_dict().items():
    if name == "lm_head.weight" and c.tie_word_embeddings:
      continue
    gguf_name = gguf_tensor_name(name)
    if gguf_name in skip:
      continue
    value = tensor.numpy().astype(np.float32)
    if name.endswith("q_proj.weight"):
      value = permute_rows(value, c.num_attention_heads)
    elif name.endswith("k_proj.weight"):
      value = permute_rows(value, c.num_key_value_heads)
    if value.ndim == 2 and qtype != GGMLQuantizationType.F32:
      writer.add_tensor(gguf_name, quants.quantize(value, qtype), raw_dtype=qtype)
    else:
      writer.add_tensor(gguf_name, value)
  for gguf_name, (value, qtype_name) in (extra_tensors or {}).items():
    kind = GGMLQuantizationType[qtype_name]
    writer.add_tensor(gguf_name, value, raw_dtype=kind if kind != GGMLQuantizationType.F32 else None)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def dequantized_model(model, matrix_type: str) -> transformers.LlamaForCausalLM:
  """A copy of ``model`` whose 2-D weights went through ``matrix_type`` and back."""
  qtype = GGMLQuantizationType[matrix_type]
  copy = tiny_llama(model.config.tie_word_embeddings)
  copy.load_state_dict(model.state_dict())
  if qtype == GGMLQuantizationType.F32:
    return copy
  with torch.no_grad():
    for _, p in copy.named_parameters():
      if p.ndim == 2:
        w = p.numpy().astype(np.float32)
        p.copy_(torch.from_numpy(quants.dequantize(quants.quantize(w, qtype), qtype).reshape(w.shape)))
  return copy
