"""Config files -> ConfigDict -> frozen values: every mistake is an error naming the field."""

import os
import subprocess

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from rope_lab import config as config_lib
from rope_lab import pe
from tests import tiny_config
from tests import train_helpers as th


def parse_command_line(*overrides, config="tests/tiny_config.py"):
  """What experiments/train.py's flags make of a command line (locked, as there)."""
  argv = ["train", f"--config={config}", *overrides]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                           lock_config=True, sys_argv=argv)
  cwd = os.getcwd()
  os.chdir(th.REPO_ROOT)
  try:
    values(argv)
  finally:
    os.chdir(cwd)
  return holder.value


def test_command_line_switches_encoding_and_sets_typed_fields():
  config = parse_command_line("--config.pe.factor=8",
                              "--config.mesh_shape=(1, 1, 1)", "--config.model.n_kv_heads=1",
                              "--config.init_from=/runs/base", "--config.steps=7",
                              config="tests/tiny_config.py:pe=yarn")
  assert set(config.pe) == {"name", *common.PE_PARAMETERS["yarn"]}  # yarn's fields only
  exp = config_lib.experiment_from_config_dict(config)
  assert exp.encoding.name == "yarn" and exp.encoding.factor == 8.0
  assert exp.encoding.original_max_position_embeddings == 16
  assert exp.train.mesh_shape == (1, 1, 1) and exp.train.steps == 7
  assert exp.train.init_from == "/runs/base" and exp.model.n_kv_heads == 1


def test_unknown_command_line_field_is_rejected_with_a_suggestion():
  with pytest.raises(AttributeError, match='stepz.*Did you mean "steps"'):
    parse_command_line("--config.stepz=3")


def test_wrong_type_on_the_command_line_is_rejected():
  with pytest.raises(flags.Error, match="steps"):
    parse_command_line("--config.steps=many")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(steps=0), r"config.steps must be an int >= 1, got 0"),
    (lambda c: c.update(lr_schedule="linear"), r"config.lr_schedule must be one of"),
    (lambda c: c.update(mesh_shape=(2, -1, -1)), r"config.mesh_shape must be 3 sizes"),
    (lambda c: c.update(global_batch_size=8, grad_accum_steps=3), r"config.grad_accum_steps"),
    (lambda c: c.update(init_from="s3:bucket/run"), r"config.init_from=.*unknown scheme .s3:."),
    (lambda c: c.update(logical_rules=(("batch", "pipeline"),)), r"config.logical_rules"),
    (lambda c: c.model.update(mlp="relu"), r"config.model: ModelConfig.mlp must be one of"),
    (lambda c: c.data.update(packing="zip"), r"config.data: DataConfig.packing"),
    (lambda c: c.pe.update(name="rotary"), r"config.pe.name must be one of"),
    (lambda c: setattr(c, "pe", common.pe_config("yarn", factor=2.0)),
     r"config.pe \(yarn\): yarn: parameter 'original_max_position_embeddings' must be set"),
    (lambda c: setattr(c, "pe", common.pe_config("yarn", factor=0.5,
                                                 original_max_position_embeddings=16)),
     r"config.pe \(yarn\): yarn: parameter 'factor'"),
    (lambda c: setattr(c, "pe", ml_collections.ConfigDict({"name": "pi", "factor": "2"})),
     r"config.pe.factor must be float \| None, got '2'"),
    # A method switched by hand keeps the old method's fields: each one is named.
    (lambda c: (setattr(c, "pe", common.pe_config("yarn")), c.pe.update(name="pi")),
     r"config.pe: encoding 'pi' has no parameter\(s\) attention_factor, beta_fast"),
])
def test_config_file_mistakes_are_errors_that_name_the_field(edit, message):
  config = tiny_config.get_config()
  edit(config)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.experiment_from_config_dict(config)


def test_wrong_type_in_a_config_file_is_rejected():
  # ConfigDict itself refuses a str for an int field once the field exists ...
  with pytest.raises(TypeError, match="steps"):
    tiny_config.get_config().steps = "100"
  # ... and a config file that builds its ConfigDict from scratch is checked on conversion.
  values = tiny_config.get_config().to_dict()
  values["steps"] = "100"
  with pytest.raises(config_lib.ConfigError, match=r"config.steps must be int, got '100'"):
    config_lib.experiment_from_config_dict(ml_collections.ConfigDict(values))
  values["steps"], values["model"]["d_model"] = 100, 32.5
  with pytest.raises(config_lib.ConfigError, match=r"config.model.d_model must be int, got 32.5"):
    config_lib.experiment_from_config_dict(ml_collections.ConfigDict(values))


def test_unknown_field_in_a_config_file_section_is_rejected():
  config = tiny_config.get_config()
  with config.model.unlocked():
    config.model.width = 64
  with pytest.raises(config_lib.ConfigError, match=r"config.model: unknown field\(s\) width"):
    config_lib.experiment_from_config_dict(config)


@pytest.mark.parametrize("override, message", [
    ("--config.steps=0", "config error: config.steps must be an int >= 1, got 0"),
    ("--config.stepz=3",
     'config error: unknown field on the command line: \'stepz\'; Did you mean "steps"'),
])
def test_command_line_config_errors_stop_before_anything_is_compiled(tmp_path, override, message):
  workdir = tmp_path / "run"
  completed = subprocess.run(
      [th.PYTHON, "-m", "experiments.train", "--config=tests/tiny_config.py",
       f"--workdir={workdir}", override],
      cwd=th.REPO_ROOT, env=th.subprocess_env(), capture_output=True, text=True, timeout=120)
  assert completed.returncode == 2
  assert message in completed.stderr and "Traceback" not in completed.stderr
  assert not workdir.exists()


@pytest.mark.parametrize("path, arg", [
    ("configs/tiny_cpu.py", None), ("configs/tiny_cpu.py", "smoke"),
    ("configs/tiny_cpu.py", "finetune"), ("configs/tiny_cpu.py", "finetune,pe=pi"),
    ("configs/tiny_cpu.py", "longlora"),
    ("configs/tiny_cpu.py", "pe=alibi,seq=256"), ("configs/gpu_125m.py", None),
    ("configs/gpu_125m.py", "finetune_8k"), ("configs/tpu_pod.py", None),
])
def test_shipped_configs_build(path, arg):
  exp = config_lib.experiment_from_config_dict(th.load_config_file(path, arg))
  assert exp.train.steps > 0 and exp.model.vocab_size >= 258


def test_tpu_pod_config_differs_from_the_gpu_config_only_in_mesh_and_batch():
  gpu = th.load_config_file("configs/gpu_125m.py").to_dict()
  tpu = th.load_config_file("configs/tpu_pod.py").to_dict()
  assert {k for k in gpu if gpu[k] != tpu[k]} == {"mesh_shape", "global_batch_size"}


def test_the_gpu_config_has_about_125m_parameters():
  exp = config_lib.experiment_from_config_dict(th.load_config_file("configs/gpu_125m.py"))
  m = exp.model
  per_layer = 4 * m.d_model * m.d_model + 3 * m.d_model * m.mlp_dim + 2 * m.d_model
  total = m.n_layers * per_layer + 2 * m.vocab_size * m.d_model + m.d_model
  assert 120e6 < total < 130e6


def test_config_pe_holds_only_the_chosen_methods_parameters():
  config = th.load_config_file("configs/tiny_cpu.py", "finetune,pe=pi,seq=1024")
  assert config.pe.to_dict() == {"name": "pi", "base": 10000.0, "rotary_fraction": 1.0,
                                 "layout": "half", "factor": 8.0}  # s = 1024 / 128
  config = th.load_config_file("configs/tiny_cpu.py", "pe=yarn,factor=4,seq=512")
  exp = config_lib.experiment_from_config_dict(config)
  assert exp.encoding.name == "yarn" and exp.encoding.factor == 4.0
  assert exp.encoding.original_max_position_embeddings == 128 and exp.train.seq_len == 512
  with pytest.raises(ValueError, match=r"encoding 'rope' has no parameter\(s\) \['factor'\]"):
    th.load_config_file("configs/tiny_cpu.py", "factor=2")
  with pytest.raises(config_lib.ConfigError, match=r"encoding 'rope' has no parameter\(s\) \['factor'\]"):
    config_lib.pe_config_dict("rope", factor=2.0)
  # Each placeholder has its method's own type: a longrope factor list parses as a tuple.
  assert common.pe_config("longrope").get_type("short_factor") is tuple


@pytest.mark.parametrize("name", sorted(pe.REGISTRY))
def test_config_files_pe_table_matches_the_encoding_registry(name):
  """configs/common.py cannot import rope_lab.pe (flax); its table must still be the registry's."""
  from_table = common.pe_config(name)
  from_registry = config_lib.pe_config_dict(name)
  assert from_table.to_dict() == from_registry.to_dict()
  for key in from_registry:
    assert from_table.get_type(key) == from_registry.get_type(key), key
  assert config_lib.encoding_from_mapping(
      {**from_table.to_dict(), **REQUIRED.get(name, {})}).name == name


REQUIRED = {  # the parameters without a default, for the table test above
    "dynamic_ntk": dict(factor=2.0, original_max_position_embeddings=16),
    "dynamic_yarn": dict(original_max_position_embeddings=16),
    "longrope": dict(short_factor=(1.0,) * 8, long_factor=(2.0,) * 8,
                     original_max_position_embeddings=16, factor=2.0),
    "ntk": dict(alpha=2.0), "ntk_by_parts": dict(factor=2.0, original_max_position_embeddings=16),
    "pi": dict(factor=2.0), "randomized": dict(max_position=64),
    "self_extend": dict(original_max_position_embeddings=1024), "truncated": dict(cutoff_wavelength=16.0),
    "yarn": dict(factor=2.0, original_max_position_embeddings=16),
    "hope": dict(original_max_position_embeddings=16), "logn": dict(original_max_position_embeddings=16),
    "per_layer": dict(layer_pattern="LLG"),
    "string": dict(shifted_offset=1024), "dual_chunk": dict(original_max_position_embeddings=16),
    "streaming_llm": dict(window=64),
}


@pytest.mark.parametrize("arg, values", [
    (None, dict(pe="", factor=0.0, seq=0, smoke=False)),
    ("pe=yarn,factor=4,seq=512", dict(pe="yarn", factor=4.0, seq=512, smoke=False)),
    (" smoke , seq=64 ", dict(pe="", factor=0.0, seq=64, smoke=True)),
    ("smoke=false,factor=2.5", dict(pe="", factor=2.5, seq=0, smoke=False)),
])
def test_config_arguments_are_typed_after_their_defaults(arg, values):
  parsed = common.parse_arg(arg, "x.py", pe="", factor=0.0, seq=0, smoke=False)
  assert parsed.to_dict() == values
  assert all(type(parsed[k]) is type(v) for k, v in values.items())


@pytest.mark.parametrize("arg, message", [
    ("sed=512", r"x.py: unknown argument 'sed'; its arguments: seq=0, smoke=False"),
    ("seq=long", r"x.py: argument 'seq' must be an int, got 'long'"),
    ("smoke=maybe", r"x.py: argument 'smoke' must be a bool"),
    ("seq", r"x.py: argument 'seq' needs a value"),
])
def test_bad_config_arguments_are_errors_naming_the_argument(arg, message):
  with pytest.raises(ValueError, match=message):
    common.parse_arg(arg, "x.py", seq=0, smoke=False)


def test_loading_a_config_file_imports_neither_flax_nor_grain():
  code = ("import sys\n"
          "from ml_collections import config_flags\n"
          "for path in ('configs/tiny_cpu.py:finetune,pe=yarn', 'configs/gpu_125m.py',\n"
          "             'configs/tpu_pod.py', 'configs/study.py', 'configs/longrope_search.py'):\n"
          "  config_flags.DEFINE_config_file(path.split('/')[1].split('.')[0], path)\n"
          "  from absl import flags\n"
          "flags.FLAGS(['x'])\n"
          "assert flags.FLAGS.tiny_cpu.pe.name == 'yarn'\n"
          "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'grain', 'jax', 'rope_lab'))\n"
          "print(heavy)\n")
  completed = subprocess.run([th.PYTHON, "-c", code], cwd=th.REPO_ROOT, env=th.subprocess_env(),
                             capture_output=True, text=True, timeout=120)
  assert completed.returncode == 0, completed.stderr
  assert completed.stdout.strip() == "[]"


def documented_commands(path: str, module: str) -> list[list[str]]:
  """Every ``python -m <module> ...`` command in a Markdown file, continuation lines joined."""
  import re  # pylint: disable=g-import-not-at-top
  import shlex  # pylint: disable=g-import-not-at-top
  with open(os.path.join(th.REPO_ROOT, path)) as f:
    text = re.sub(r"\\+\n", " ", f.read())  # "\" line ends, in Markdown or a docstring
  commands = []
  for line in text.splitlines():
    start = line.find(f"python -m {module} ")
    if start >= 0:
      # Inside gcloud's --command="..." the quote closes the command.
      commands.append(shlex.split(line[start:].split("#")[0].split('"')[0]))
  return commands


@pytest.mark.parametrize("path", ["README.md", "configs/tiny_cpu.py", "configs/gpu_125m.py",
                                  "configs/tpu_pod.py"])
def test_documented_training_commands_build_their_configs(path):
  commands = documented_commands(path, "experiments.train")
  assert commands
  for command in commands:
    flags_ = [a for a in command[3:] if a.startswith("--config")]
    exp = config_lib.experiment_from_config_dict(parse_command_line(
        *flags_[1:], config=flags_[0].split("=", 1)[1]))
    assert exp.train.steps >= 1, command
