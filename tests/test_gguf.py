"""GGUF import: tiny llama files written as llama.cpp writes them load with transformers' logits.

transformers reads the same files with its own GGUF loader (its own name mapping and
q/k un-permutation), so the parity test checks the mapping and the permutation against
an independent reader. The dequantization tests check gguf's block decoders against
ggml's block formulas (``ggml-quants.c``, ``dequantize_row_*``) transcribed below.
"""

import os
import warnings

import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType, quants

from rope_lab import pe
from rope_lab.errors import ConfigError
from rope_lab.interop import gguf as gguf_io
from tests.gguf_helpers import VOCAB, dequantized_model, tiny_llama, write_gguf

TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 40), dtype=np.int32)


def torch_logits(model, tokens=TOKENS):
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("matrix_type", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_logits_match_transformers_reading_the_same_file(tmp_path, matrix_type):
  model = tiny_llama()
  path = str(tmp_path / "tiny.gguf")
  write_gguf(model, path, matrix_type=matrix_type)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32).eval()
  ours = np.asarray(gguf_io.load(path).logits(TOKENS))
  assert np.abs(ours - torch_logits(reference)).max() <= 1e-5
  # ... and the weights are the source model's after the same quantization round trip.
  assert np.abs(ours - torch_logits(dequantized_model(model, matrix_type))).max() <= 1e-5


def test_interleaved_layout_equals_unpermuted_half_layout(tmp_path):
  model = tiny_llama(tied=True)
  path = str(tmp_path / "tiny.gguf")
  write_gguf(model, path, matrix_type="Q8_0")
  half = gguf_io.load(path)
  interleaved = gguf_io.load(path, rotary_layout="interleaved")
  assert half.config.tied_embeddings and "lm_head" not in half.params
  assert interleaved.encoding.layout_name() == "interleaved"
  # The interleaved model keeps llama.cpp's rows, so its q kernels differ from the half ones ...
  q_half = np.asarray(half.params["layers_0"]["attn"]["q"]["kernel"])
  q_inter = np.asarray(interleaved.params["layers_0"]["attn"]["q"]["kernel"])
  assert np.abs(q_half - q_inter).max() > 1e-3
  # ... yet every logit agrees, under plain RoPE and under YaRN built in each layout.
  assert np.abs(np.asarray(half.logits(TOKENS)) - np.asarray(interleaved.logits(TOKENS))).max() <= 1e-5
  yarn = dict(factor=4.0, original_max_position_embeddings=16)
  a = half.with_encoding(pe.make("yarn", **yarn)).logits(TOKENS)
  b = interleaved.with_encoding(pe.make("yarn", layout="interleaved", **yarn)).logits(TOKENS)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5
  with pytest.raises(ConfigError, match="layout 'half'.*loaded for layout 'interleaved'"):
    interleaved.with_encoding(pe.make("yarn", **yarn))


def test_first_n_layers_equal_transformers_cut_to_those_layers(tmp_path):
  model = tiny_llama()
  path = str(tmp_path / "tiny.gguf")
  write_gguf(model, path)
  first = gguf_io.load(path, n_layers=1)  # strict: the unread blk.1 tensors are not "unused"
  assert first.config.n_layers == 1 and sorted(k for k in first.params if k.startswith("layers_")) == ["layers_0"]
  cut = tiny_llama()
  cut.load_state_dict(model.state_dict())
  cut.model.layers = cut.model.layers[:1]
  cut.config.num_hidden_layers = 1
  assert np.abs(np.asarray(first.logits(TOKENS)) - torch_logits(cut)).max() <= 1e-5
  assert np.abs(np.asarray(first.logits(TOKENS)) - torch_logits(model)).max() > 1e-3  # the cut matters
  for bad in (0, 3, 1.0, True):
    with pytest.raises(ConfigError, match=r"parameter n_layers must be an int in \[1, 2\].*" + repr(bad)):
      gguf_io.load(path, n_layers=bad)


def test_keyword_overrides_are_checked_by_name(tmp_path):
  model = tiny_llama()
  path = str(tmp_path / "tiny.gguf")
  write_gguf(model, path)
  chunked = gguf_io.load(path, attention="chunked", chunk_size=8)
  assert chunked.config.attention == "chunked" and chunked.config.chunk_size == 8
  with pytest.raises(ConfigError, match="unknown parameter 'n_layer'.*attention"):
    gguf_io.load(path, n_layer=1)
  with pytest.raises(ConfigError, match="parameter 'd_model' is read from the file"):
    gguf_io.load(path, d_model=32)


def test_unpermute_inverts_llama_cpp_permutation():
  w = np.arange(2 * 8 * 3).reshape(16, 3)  # 2 heads of head_dim 8
  permuted = gguf_io.permute_rows(w, 2)
  # llama.cpp pairs row i with row i + Dh/2: GGUF rows (0, 4, 1, 5, 2, 6, 3, 7) of each head.
  assert permuted[:8, 0].tolist() == [0, 12, 3, 15, 6, 18, 9, 21]
  np.testing.assert_array_equal(gguf_io.unpermute_rows(permuted, 2), w)


def test_errors_name_the_architecture_type_and_tensor(tmp_path):
  model = tiny_llama()
  path = str(tmp_path / "bad.gguf")
  write_gguf(model, path, arch="gpt2")
  with pytest.raises(gguf_io.GGUFCheckpointError, match="'general.architecture' is 'gpt2'"):
    gguf_io.load(path)
  write_gguf(model, path, skip=("blk.1.ffn_up.weight",))
  with pytest.raises(gguf_io.GGUFCheckpointError, match="missing weight.*blk.1.ffn_up.weight"):
    gguf_io.load(path)
  w = model.state_dict()["model.layers.0.mlp.up_proj.weight"].numpy()
  q5 = quants.quantize(w, GGMLQuantizationType.Q5_0)
  write_gguf(model, path, skip=("blk.0.ffn_up.weight",), extra_tensors={"blk.0.ffn_up.weight": (q5, "Q5_0")})
  with pytest.raises(gguf_io.GGUFCheckpointError, match="tensor blk.0.ffn_up.weight has type Q5_0"):
    gguf_io.load(path)
  extra = {"blk.2.ffn_up.weight": (w, "F32")}
  write_gguf(model, path, extra_tensors=extra)
  with pytest.raises(gguf_io.GGUFCheckpointError, match="1 tensor.*not used.*blk.2.ffn_up.weight"):
    gguf_io.load(path)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    gguf_io.load(path, strict=False)
  assert any("not used" in str(w.message) for w in caught)
  with pytest.raises(gguf_io.GGUFCheckpointError, match="does not exist"):
    gguf_io.load(str(tmp_path / "nowhere.gguf"))


# ----------------------------------------------------------------------------- dequantization
# ggml's block formulas, one block at a time (QK = 32 for the simple types, QK_K = 256).

f16 = lambda b: float(np.frombuffer(bytes(b), np.float16)[0])


def ref_q8_0(block):  # d: f16, qs: int8[32]; y = d * q
  d = f16(block[:2])
  return [d * q for q in np.frombuffer(bytes(block[2:34]), np.int8)]


def ref_q4_0(block):  # d: f16, qs: u8[16]; y[j] = d * (lo - 8), y[j + 16] = d * (hi - 8)
  d, qs = f16(block[:2]), block[2:18]
  return [d * ((q & 0xF) - 8) for q in qs] + [d * ((q >> 4) - 8) for q in qs]


def ref_q4_1(block):  # d, m: f16, qs: u8[16]; y = d * q + m
  d, m, qs = f16(block[:2]), f16(block[2:4]), block[4:20]
  return [d * (q & 0xF) + m for q in qs] + [d * (q >> 4) + m for q in qs]


def _scale_min_k4(j, s):
  if j < 4:
    return s[j] & 63, s[j + 4] & 63
  return (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


def ref_q4_k(block):  # d, dmin: f16, scales: u8[12] (6-bit scales and mins), qs: u8[128]
  d, dmin, scales, qs = f16(block[:2]), f16(block[2:4]), block[4:16], block[16:144]
  out = []
  for j in range(4):  # 64 values per step: 32 low nibbles, then 32 high nibbles
    sc1, m1 = _scale_min_k4(2 * j, scales)
    sc2, m2 = _scale_min_k4(2 * j + 1, scales)
    q = qs[32 * j: 32 * j + 32]
    out += [d * sc1 * (x & 0xF) - dmin * m1 for x in q]
    out += [d * sc2 * (x >> 4) - dmin * m2 for x in q]
  return out


def ref_q6_k(block):  # ql: u8[128], qh: u8[64], scales: int8[16], d: f16
  ql, qh = block[:128], block[128:192]
  sc = np.frombuffer(bytes(block[192:208]), np.int8)
  d = f16(block[208:210])
  out = [0.0] * 256
  for half in range(2):
    l_, h_, s_, y = ql[64 * half:], qh[32 * half:], sc[8 * half:], 128 * half
    for l in range(32):
      i = l // 16
      q1 = ((l_[l] & 0xF) | (((h_[l] >> 0) & 3) << 4)) - 32
      q2 = ((l_[l + 32] & 0xF) | (((h_[l] >> 2) & 3) << 4)) - 32
      q3 = ((l_[l] >> 4) | (((h_[l] >> 4) & 3) << 4)) - 32
      q4 = ((l_[l + 32] >> 4) | (((h_[l] >> 6) & 3) << 4)) - 32
      out[y + l] = d * s_[i] * q1
      out[y + l + 32] = d * s_[i + 2] * q2
      out[y + l + 64] = d * s_[i + 4] * q3
      out[y + l + 96] = d * s_[i + 6] * q4
  return out


REFERENCES = {"Q8_0": (ref_q8_0, (0,)), "Q4_0": (ref_q4_0, (0,)), "Q4_1": (ref_q4_1, (0, 2)),
              "Q4_K": (ref_q4_k, (0, 2)), "Q6_K": (ref_q6_k, (208,))}


@pytest.mark.parametrize("kind", sorted(REFERENCES))
def test_dequantization_follows_ggml_block_formulas(kind):
  reference, f16_offsets = REFERENCES[kind]
  _, block_bytes = quants.GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
  rng = np.random.default_rng(1)
  blocks = rng.integers(0, 256, size=(3, block_bytes), dtype=np.uint8)
  for offset in f16_offsets:  # finite, moderate f16 scales
    blocks[:, offset:offset + 2] = np.frombuffer(rng.uniform(-2, 2, 3).astype(np.float16).tobytes(),
                                                 np.uint8).reshape(3, 2)
  want = np.concatenate([np.asarray(reference([int(x) for x in b]), np.float32) for b in blocks])
  got = gguf_io.GGUFFile("x", {}, {"t": _Tensor(blocks.reshape(-1), kind, want.size)}).read("t")
  np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-6, atol=1e-6)


def test_float_types_decode_exactly():
  values = np.random.default_rng(2).standard_normal(64).astype(np.float32)
  f16_bits = values.astype(np.float16)
  got = gguf_io.GGUFFile("x", {}, {"t": _Tensor(f16_bits.view(np.uint8), "F16", 64)}).read("t")
  np.testing.assert_array_equal(got, f16_bits.astype(np.float32))
  bf16_bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exact in bf16
  got = gguf_io.GGUFFile("x", {}, {"t": _Tensor(bf16_bits.view(np.uint8), "BF16", 64)}).read("t")
  np.testing.assert_array_equal(got, (bf16_bits.astype(np.uint32) << 16).view(np.float32))


class _Tensor:
  """The fields of gguf.ReaderTensor that GGUFFile.read uses."""

  def __init__(self, data, kind, n):
    self.data, self.tensor_type, self.shape = data, GGMLQuantizationType[kind], np.asarray([n])
