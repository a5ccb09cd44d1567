"""SmolLM2-135M from its GGUF file: rope_lab against transformers reading the same file.

The model comes from the asset store (``python -m experiments.fetch_assets``; CI fetches
it before the tests). Each side loads it once per module: transformers dequantizes the
file with its own GGUF loader and un-permutes q/k itself, so agreement checks our
mapping, our permutation handling, our rotary tables under three rope settings and our
tokenizer against an independent reader.
"""

import functools
import os

import gguf
import numpy as np
import pytest
import torch
import transformers

from rope_lab.data import assets
from rope_lab.model import generate as gen
from rope_lab.interop import gguf as gguf_io
from rope_lab.interop.hf_rope import encoding_from_hf

# The logits tests run the 30-layer model over 1,024 tokens: optimised programs repay their compile.
pytestmark = pytest.mark.usefixtures("optimized_compiles")

ROPE = {"plain": {"rope_type": "default"},
        "linear": {"rope_type": "linear", "factor": 2.0},
        "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}}
# One window per rope: causal attention makes its first n logits those of the first n tokens
# alone, so every shorter length is checked inside it. The scaled ropes only move the
# angles, which half the window covers at every position up to it.
LENGTHS_OF = {"plain": 1024, "linear": 512, "yarn": 512}


@pytest.fixture(scope="module")
def path():
  return assets.smollm2_gguf()


@pytest.fixture(scope="module")
def ours(path):
  return gguf_io.load(path)


@pytest.fixture(scope="module")
def one_gguf_parse():
  """transformers parses the GGUF file three times (config, weights, tokenizer) and rebuilds
  gguf's tensor-name map once per submodule (397 times for SmolLM2): 20 s of this module's
  setup on 2 cores, 8 s with one parse and one map serving every call. What transformers
  reads from them is unchanged."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(gguf, "GGUFReader", functools.cache(gguf.GGUFReader))
    patch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
    yield


@pytest.fixture(scope="module")
def reference(path, one_gguf_parse):
  torch.set_num_threads(1)  # the other core runs the other xdist worker (see tests/conftest.py)
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference_tokenizer(path, one_gguf_parse):
  return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(scope="module")
def text_ids(reference_tokenizer):
  essays = assets.paul_graham_essays()
  ids = reference_tokenizer(essays[sorted(essays)[0]] + essays[sorted(essays)[1]])["input_ids"]
  assert len(ids) >= max(LENGTHS_OF.values())
  return np.asarray(ids[:max(LENGTHS_OF.values())], np.int32)[None]


def with_rope(reference, rope: dict):
  """transformers' model with its rotary embedding rebuilt for ``rope``."""
  config = reference.config
  config.rope_parameters = {**rope, "rope_theta": 100000.0}
  reference.model.rotary_emb = type(reference.model.rotary_emb)(config=config)
  return reference


def token_nll(logits_BxLxV, tokens_BxL) -> np.ndarray:
  """float64 [B, L - 1]: each next token's negative log-likelihood."""
  logits = logits_BxLxV[:, :-1].astype(np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  target = np.take_along_axis(logits, tokens_BxL[:, 1:, None].astype(np.int64), -1)[..., 0]
  return log_z - target


@pytest.mark.parametrize("rope_name", sorted(ROPE))
def test_logits_and_loss_match_transformers_on_real_text(ours, reference, text_ids, rope_name):
  rope = ROPE[rope_name]
  encoding = encoding_from_hf({"rope_parameters": {**rope, "rope_theta": 100000.0},
                               "max_position_embeddings": 8192})
  model = ours.with_encoding(encoding)
  ref = with_rope(reference, rope)
  try:
    _compare_at_lengths(model, ref, text_ids, rope_name)
  finally:
    with_rope(reference, ROPE["plain"])


def _compare_at_lengths(model, ref, text_ids, rope_name):
  length = LENGTHS_OF[rope_name]
  tokens = text_ids[:, :length]
  got = np.asarray(model.logits(tokens))
  with torch.no_grad():
    want = ref(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  assert np.abs(got - want).max() <= 1e-3, (rope_name, length, np.abs(got - want).max())
  token_got, token_want = token_nll(got, tokens), token_nll(want, tokens)
  for n in sorted({256, length}):  # the mean loss over a short prefix and over the whole window
    nll_got, nll_want = float(token_got[:, :n - 1].mean()), float(token_want[:, :n - 1].mean())
    assert abs(nll_got - nll_want) <= 1e-5 * nll_want, (rope_name, n, nll_got, nll_want)
    assert nll_want < 6.0  # real text under a real model (a broken load gives ~log(49152) = 10.8)


PAGE = (
    "The sun rose over the hills, and by nine o'clock the market was full: apples, pears, "
    "bread still warm from the ovens.\n\n"
    "def fibonacci(n: int) -> list[int]:\n    a, b = 0, 1\n    out = []\n    for _ in range(n):\n"
    "        out.append(a)\n        a, b = b, a + b\n    return out  # 0, 1, 1, 2, 3, 5, 8\n\n"
    "Größe, naïve café, señor, Ελληνικά, русский текст, 東京タワー, 한국어, emoji 😀🚀, "
    "tabs\tand  double  spaces, CRLF\r\n, 3.14159 and 2024-11-30, <|endoftext|> <|im_start|>user\n"
)


def test_tokenizer_gives_transformers_ids(path, reference_tokenizer):
  ours = gguf_io.tokenizer(path)
  for text in (PAGE, PAGE * 3, assets.paul_graham_essays()["addiction"]):
    assert ours.encode(text).ids == reference_tokenizer(text)["input_ids"]
    assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text


def test_tokenizer_isolates_every_numeric_character_as_llama_cpp_does(path):
  """llama.cpp's 'smollm' pre-tokenizer matches \\p{N} alone before GPT-2's split.

  So ' ½' is ' ' then '½' (transformers 5's GGUF reader keeps GPT-2's split alone here and
  gives ' ' + the first byte of '½' merged instead; ASCII digits agree either way because
  the vocabulary has no multi-digit tokens).
  """
  ours = gguf_io.tokenizer(path)
  vocab = ours.get_vocab()
  assert ours.encode("a ½").ids == [vocab["a"], vocab["\u0120"], vocab["\u00c2\u00bd"]]
  assert ours.encode(" 12").ids == [vocab["\u0120"], vocab["1"], vocab["2"]]


GENERATION_PROMPTS = (
    "The capital of France is Paris. The capital of Germany is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "There is an important info hidden inside a lot of irrelevant text. The pass key is 71432.",
)


def test_greedy_generation_equals_transformers_generate(ours, reference, reference_tokenizer):
  """20 greedy tokens from a batch of prompts (cut to one token length: one compilation).

  The loaded model scans its 30 identical blocks (``scan_layers``), so the prefill and
  decode programs compile one block each; the tokens must equal transformers'.
  """
  assert ours.config.scan_layers
  encoded = [reference_tokenizer(p)["input_ids"] for p in GENERATION_PROMPTS]
  length = min(len(ids) for ids in encoded)
  prompts = [ids[:length] for ids in encoded]
  eos = reference_tokenizer.eos_token_id
  got = gen.generate(ours, prompts, 20, stop_tokens=[eos])
  for prompt, tokens in zip(prompts, got):
    with torch.no_grad():
      out = reference.generate(torch.as_tensor([prompt]), max_new_tokens=20, do_sample=False,
                               eos_token_id=eos, pad_token_id=eos)
    want = out[0, length:].tolist()
    assert tokens == want, (reference_tokenizer.decode(tokens), reference_tokenizer.decode(want))
