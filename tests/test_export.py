"""Exports load in transformers (and GGUF readers) with rope_lab's logits, for every rope type."""

import json
import os
import subprocess
import sys

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers

from rope_lab import pe
from rope_lab.data import tokenizers as tokenizers_lib
from rope_lab.errors import ConfigError
from rope_lab.interop import export as export_lib
from rope_lab.interop import gguf as gguf_io
from rope_lab.interop import hf
from rope_lab.interop.hf_rope import ENCODINGS_TO_HF, encoding_from_hf
from rope_lab.model.skeleton import ModelConfig
from tests import gguf_helpers
from tests.train_helpers import REPO_ROOT, tiny_experiment

ORIGINAL = 256  # the tiny model's "pretraining" window
LENGTH = 1024  # evaluated 4x beyond it
PAIRS = 8  # head_dim 16
CFG = ModelConfig(vocab_size=258, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128,
                  norm_eps=1e-5, init_std=0.1)
# One encoding per transformers rope_type (transformers 5: ROPE_INIT_FUNCTIONS plus "default").
ENCODINGS = {
    "default": pe.make("rope"),
    "linear": pe.make("pi", factor=4.0),
    "dynamic": pe.make("dynamic_ntk", factor=4.0, original_max_position_embeddings=ORIGINAL),
    "yarn": pe.make("yarn", factor=4.0, original_max_position_embeddings=ORIGINAL),
    "longrope": pe.make("longrope", short_factor=list(np.linspace(1.0, 1.3, PAIRS)),
                        long_factor=list(np.linspace(1.0, 6.0, PAIRS)), original_max_position_embeddings=ORIGINAL,
                        factor=4.0, require_monotone=False),  # (as transformers configs read back)
    "llama3": pe.make("llama3", base=10000.0, factor=4.0, original_max_position_embeddings=ORIGINAL),
    "proportional": pe.make("proportional", rope_proportion=0.5, factor=2.0),
}


def test_every_transformers_rope_type_is_covered():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  assert set(ENCODINGS) == {"default", *ROPE_INIT_FUNCTIONS}
  assert {enc.name for enc in ENCODINGS.values()} == set(ENCODINGS_TO_HF)


def random_model(encoding, cfg=CFG, seed=0) -> hf.HFModel:
  hooks = encoding.hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=1)
  params = hf.nn_unbox_init(cfg, hooks)
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(seed)
  perturbed = [np.asarray(x) + (rng.normal(0, 0.2, x.shape).astype(np.float32) if "norm" in str(path) else 0)
               for path, x in leaves]  # norms away from 1, so a mis-mapped norm shows
  return hf.HFModel(cfg, jax.tree_util.tree_unflatten(tree, perturbed), encoding, {},
                    rotary_layout=encoding.layout_name())


def tokens(length=LENGTH, batch=1, vocab=CFG.vocab_size, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int32)


def transformers_logits(directory, ids, **kwargs):
  torch.set_num_threads(1)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                            attn_implementation="eager", **kwargs).eval()
  with torch.no_grad():
    return model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("rope_type", sorted(ENCODINGS))
def test_hf_export_matches_transformers_beyond_the_original_window(tmp_path, rope_type):
  encoding = ENCODINGS[rope_type]
  model = random_model(encoding)
  out = export_lib.export(export_lib.Exportable(model, "byte", ORIGINAL), str(tmp_path / rope_type))
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["rope_parameters"]["rope_type"] == rope_type
  assert encoding_from_hf(config) == encoding  # the rope settings read back as the encoding
  ids = tokens()
  ours = np.asarray(model.logits(ids))
  theirs = transformers_logits(out, ids)
  assert np.abs(ours).max() > 0.1  # logits that would show a difference
  assert np.abs(ours - theirs).max() <= 1e-4, (rope_type, np.abs(ours - theirs).max())


def test_context_length_written_for_each_encoding():
  assert export_lib.max_position_embeddings(ENCODINGS["default"], ORIGINAL) == ORIGINAL
  assert export_lib.max_position_embeddings(ENCODINGS["yarn"], ORIGINAL) == 4 * ORIGINAL
  assert export_lib.max_position_embeddings(ENCODINGS["longrope"], ORIGINAL) == 4 * ORIGINAL
  assert export_lib.max_position_embeddings(ENCODINGS["dynamic"], 8 * ORIGINAL) == ORIGINAL  # transformers' original
  assert export_lib.max_position_embeddings(ENCODINGS["yarn"], 8 * ORIGINAL) == 8 * ORIGINAL


INEXPRESSIBLE = {
    "ntk": {"alpha": 4.0}, "xpos": {"layout": "half"}, "alibi": {}, "nope": {}, "logn": {"original_max_position_embeddings": 64},
    "self_extend": {"original_max_position_embeddings": 64, "window": 32}, "rerope": {"window": 32},
   
    "dynamic_yarn": {"original_max_position_embeddings": 64}, "sinusoidal": {}, "power": {},
}


@pytest.mark.parametrize("name", sorted(INEXPRESSIBLE))
def test_encodings_transformers_cannot_express_are_refused_by_name(tmp_path, name):
  model = random_model(pe.make("rope"))
  model = hf.HFModel(model.config, model.params, pe.make(name, **INEXPRESSIBLE[name]), {},
                     rotary_layout=pe.make(name, **INEXPRESSIBLE[name]).layout_name())
  with pytest.raises(ConfigError, match=f"'{name}'"):
    export_lib.export(export_lib.Exportable(model, "byte", ORIGINAL), str(tmp_path / name))
  assert not os.path.exists(tmp_path / name / "model.safetensors")


def test_shapes_llama_has_no_field_for_are_refused(tmp_path):
  import dataclasses
  model = random_model(pe.make("rope"))
  for field, value in (("embedding_multiplier", 8.0), ("norm", "layer")):
    bad = dataclasses.replace(model, config=dataclasses.replace(CFG, **{field: value}))
    with pytest.raises(ConfigError, match=f"ModelConfig.{field}"):
      export_lib.export(export_lib.Exportable(bad, "byte", ORIGINAL), str(tmp_path / field))


def test_byte_tokenizer_exports_for_transformers(tmp_path):
  text = "Grüße, naïve café 😀\n\tdef f(x):  return x  # 3.14 <eod>"
  expected = tokenizers_lib.ByteTokenizer().encode(text)
  model = random_model(pe.make("rope"))
  out = export_lib.export(export_lib.Exportable(model, "byte", ORIGINAL), str(tmp_path / "hf"))
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer(text)["input_ids"] == expected
  assert tokenizer.decode(expected) == text
  assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (256, 257)
  with pytest.raises(ConfigError, match="byte tokenizer has no GGUF form"):
    export_lib.export(export_lib.Exportable(model, "byte", ORIGINAL), str(tmp_path / "gguf"), format="gguf")


def test_smollm2_tokenizer_round_trips_through_both_formats(tmp_path):
  """gguf: metadata -> tokenizer.json (transformers' ids) -> GGUF metadata again (rope_lab's ids)."""
  from rope_lab.data import assets
  source = "gguf:" + assets.smollm2_gguf()
  original = tokenizers_lib.HFTokenizer(source)
  cfg = ModelConfig(vocab_size=original.vocab_size, d_model=16, n_layers=1, n_heads=2, mlp_dim=32)
  model = random_model(pe.make("rope"), cfg)
  hf_dir = export_lib.export(export_lib.Exportable(model, source, ORIGINAL), str(tmp_path / "hf"))
  path = export_lib.export(export_lib.Exportable(model, "hf:" + hf_dir, ORIGINAL), str(tmp_path / "gguf"),
                           format="gguf")
  text = "Größe, naïve café ½ 2024-11-30 <|endoftext|> <|im_start|>user\n  def f(x):\n\treturn x"
  ids = original.encode(text)
  assert transformers.AutoTokenizer.from_pretrained(hf_dir)(text)["input_ids"] == ids
  assert tokenizers_lib.HFTokenizer("gguf:" + path).encode(text) == ids
  fields = gguf_io.read_file(path).fields  # (the parse HFTokenizer made, cached)
  assert (fields["tokenizer.ggml.pre"], fields["tokenizer.ggml.eos_token_id"]) == ("smollm", original.eod_id)


def test_lora_run_exports_its_merged_weights(tmp_path):
  """A LoRA fine-tune: transformers runs the merged weights the run's own evaluation uses."""
  from rope_lab.evaluate import runs
  from rope_lab.model import lora
  from rope_lab.training import loop as train
  from rope_lab.training.checkpoint import Checkpointer
  from rope_lab.training.step import build_program

  exp = tiny_experiment(steps=3, seq_len=64, lora_rank=4, learning_rate=1e-2, warmup_steps=1,
                        lr_schedule="constant", eval_every=0, **{"model__scan_layers": False})
  exp = type(exp)(model=exp.model, data=exp.data, train=exp.train,
                  encoding=pe.make("yarn", factor=4.0, original_max_position_embeddings=32))
  workdir = str(tmp_path / "run")
  train.run(exp, workdir)
  run = runs.load_run(workdir)
  out = export_lib.export(workdir, str(tmp_path / "exported"))
  ids = tokens(length=128, vocab=exp.model.vocab_size)
  ours = hf.HFModel(run.model, run.params, run.encoding, {}).logits(ids)
  # The adapters moved: the merged weights are not the frozen ones under them.
  program = build_program(exp)
  stored, _ = Checkpointer(workdir, keep=1, async_save=False).restore(run.step, program.setup.abstract_checkpoint)
  adapters, frozen = stored.adapters["adapters"], stored.adapters["frozen"]
  merged = lora.merge(frozen, adapters, program.setup.lora.scale)
  q_path = ("layers_0", "attn", "q", "kernel")
  get = lambda tree: tree[q_path[0]][q_path[1]][q_path[2]][q_path[3]]
  assert np.abs(np.asarray(get(frozen)) - np.asarray(get(run.params))).max() > 1e-4
  np.testing.assert_allclose(np.asarray(get(merged)), np.asarray(get(run.params)), atol=1e-6)
  theirs = transformers_logits(out, ids)
  assert np.abs(np.asarray(ours) - theirs).max() <= 1e-4
  assert transformers.AutoTokenizer.from_pretrained(out)("abc")["input_ids"] == [97, 98, 99]


# ----------------------------------------------------------------------------- GGUF

GGUF_ENCODINGS = {
    "rope": pe.make("rope"),
    "pi": pe.make("pi", factor=4.0),
    "yarn": pe.make("yarn", factor=4.0, original_max_position_embeddings=ORIGINAL),
}


@pytest.mark.parametrize("name", sorted(GGUF_ENCODINGS))
def test_gguf_export_reads_back_to_the_same_logits(tmp_path, name):
  encoding = GGUF_ENCODINGS[name]
  model = random_model(encoding)
  path = export_lib.export(export_lib.Exportable(model, None, ORIGINAL), str(tmp_path), format="gguf",
                           with_tokenizer=False)
  reader = gguf.GGUFReader(path)
  fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
  assert fields["general.architecture"] == "llama"
  assert fields["llama.rope.scaling.type" if name != "rope" else "llama.rope.freq_base"] == (
      {"pi": "linear", "yarn": "yarn"}.get(name, 10000.0))
  # llama.cpp's q row order: row 2i of a head is rotate-half row i.
  q_gguf = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
  q_hf = hf.torch_tensors(CFG, model.params)["model.layers.0.self_attn.q_proj.weight"]
  np.testing.assert_array_equal(np.asarray(q_gguf.data).reshape(q_hf.shape), gguf_io.permute_rows(q_hf, CFG.n_heads))
  ids = tokens()
  back = gguf_io.load(path)
  assert back.encoding == encoding
  assert np.abs(np.asarray(back.logits(ids)) - np.asarray(model.logits(ids))).max() <= 1e-5
  interleaved = gguf_io.load(path, rotary_layout="interleaved")  # llama.cpp's pairing, rows as written
  assert np.abs(np.asarray(interleaved.logits(ids)) - np.asarray(model.logits(ids))).max() <= 1e-4


def test_gguf_export_loads_in_transformers(tmp_path):
  """transformers' GGUF reader (the gguf package underneath) un-permutes q/k itself."""
  model = random_model(pe.make("rope"))
  path = export_lib.export(export_lib.Exportable(model, None, ORIGINAL), str(tmp_path), format="gguf",
                           with_tokenizer=False)
  ids = tokens(length=300)
  theirs = transformers_logits(os.path.dirname(path), ids, gguf_file=os.path.basename(path))
  assert np.abs(np.asarray(model.logits(ids)) - theirs).max() <= 1e-4


@pytest.mark.parametrize("encoding,needle", [
    (ENCODINGS["dynamic"], "'dynamic_ntk'"), (ENCODINGS["longrope"], "'longrope'"),
    (ENCODINGS["llama3"], "'llama3'"), (pe.make("ntk", alpha=2.0), "'ntk'"),
    (pe.make("yarn", factor=4.0, original_max_position_embeddings=ORIGINAL, beta_fast=16.0), "beta_fast=16.0"),
])
def test_gguf_refuses_what_its_rope_keys_cannot_say(tmp_path, encoding, needle):
  model = hf.HFModel(CFG, random_model(pe.make("rope")).params, encoding, {})
  with pytest.raises(ConfigError, match=needle):
    export_lib.export(export_lib.Exportable(model, None, ORIGINAL), str(tmp_path), format="gguf",
                           with_tokenizer=False)
  assert not os.path.exists(tmp_path / export_lib.GGUF_FILENAME)


def test_interleaved_gguf_weights_export_as_rotate_half(tmp_path):
  """A GGUF kept in llama.cpp's row order (interleaved pairing) exports to transformers' order."""
  reference = gguf_helpers.tiny_llama()
  path = str(tmp_path / "tiny.gguf")
  gguf_helpers.write_gguf(reference, path)
  loaded = gguf_io.load(path, rotary_layout="interleaved")
  yarn = pe.make("yarn", factor=4.0, original_max_position_embeddings=64, layout="interleaved")
  item = export_lib.Exportable(loaded.with_encoding(yarn), None, 64)
  out = export_lib.export(item, str(tmp_path / "hf"), with_tokenizer=False)
  ids = tokens(length=400, vocab=gguf_helpers.VOCAB)
  theirs = transformers_logits(out, ids)
  assert np.abs(np.asarray(loaded.with_encoding(yarn).logits(ids)) - theirs).max() <= 1e-4
  assert json.load(open(os.path.join(out, "config.json")))["rope_parameters"]["rope_type"] == "yarn"


def test_command_line_exports_a_gguf_file_as_hugging_face(tmp_path):
  reference = gguf_helpers.tiny_llama()
  path = str(tmp_path / "tiny.gguf")
  gguf_helpers.write_gguf(reference, path)
  out = str(tmp_path / "out")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.export", f"--run=gguf:{path}", f"--out={out}", "--format=hf",
       "--encoding={\"name\": \"pi\", \"factor\": 2}", "--notokenizer"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert out in result.stdout
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}
  bad = subprocess.run(
      [sys.executable, "-m", "experiments.export", f"--run=gguf:{path}", f"--out={out}", "--format=gguf",
       "--encoding={\"name\": \"ntk\", \"alpha\": 2}", "--notokenizer"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode == 2 and "config error:" in bad.stderr and "'ntk'" in bad.stderr, bad.stderr
