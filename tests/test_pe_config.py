"""Bad encoding configs fail at config time with the parameter and the valid range named."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from rope_lab import pe


@pytest.mark.parametrize("name,params,needle", [
    ("no_such_method", {}, "unknown encoding 'no_such_method'"),
    ("pi", {"factor": 0.5}, "'factor' must be >= 1"),
    ("pi", {}, "'factor' must be set"),
    ("ntk", {"alpha": 0.9}, "'alpha' must be >= 1"),
    ("yarn", {"factor": 4.0}, "'original_max_position_embeddings' must be set"),
    ("dynamic_yarn", {}, "'original_max_position_embeddings' must be set"),
    ("longrope", {"short_factor": [1.0, 1.0], "long_factor": [1.0, 2.0]}, "'original_max_position_embeddings'"),
    ("longrope", {"short_factor": [1.0, 1.0], "long_factor": [2.0, 1.0], "original_max_position_embeddings": 64},
     "'long_factor' must be non-decreasing"),
    ("longrope", {"short_factor": [1.0], "long_factor": [1.0, 2.0], "original_max_position_embeddings": 64},
     "'long_factor' must be as long as short_factor"),
    ("longrope", {"short_factor": [1.0] * 3, "long_factor": [1.0] * 3, "original_max_position_embeddings": 64,
                  "head_dim": 8}, "4 rotary pairs"),
    ("xpos", {"scale_base": 0.0}, "'scale_base' must be > 0"),
    ("xpos", {"scale_base": -5}, "'scale_base' must be > 0"),
    ("self_extend", {"window": 64, "original_max_position_embeddings": 64}, "'window' must be in [1, "),
    ("rope", {"rotary_fraction": 1.5}, "'rotary_fraction' must be in (0, 1]"),
    ("rope", {"layout": "sideways"}, "'layout' must be 'half' or 'interleaved'"),
    ("rope", {"base": 1.0}, "'base' must be > 1"),
    ("rope", {"theta": 10000.0}, "unknown parameter(s) theta"),
    ("rope", {"base": True}, "'base' must be float"),
    ("llama3", {"low_freq_factor": 4.0, "high_freq_factor": 1.0}, "high_freq_factor > low_freq_factor"),
    ("truncated", {}, "'cutoff_wavelength' must be > 0"),
    ("randomized", {"max_position": 1}, "'max_position' must be >= 2"),
    ("learned", {"extension": "zoom"}, "'extension' must be one of"),
    ("learned", {"extension": "recurrent"}, "'original_max_position_embeddings' must be >= 1"),
    ("sinusoidal", {"layout": "stacked"}, "'layout' must be 'interleaved' or 'concat'"),
    ("alibi", {"max_bias": 0}, "'max_bias' must be > 0"),
])
def test_bad_config_is_a_clear_error(name, params, needle):
  with pytest.raises(pe.ConfigError) as info:
    pe.make(name, **params)
  assert needle in str(info.value)


def test_odd_rotary_dimension_fails_before_compute():
  enc = pe.make("rope", rotary_fraction=0.5)
  with pytest.raises(pe.ConfigError, match="must be even"):
    enc.hooks(head_dim=6, n_heads=1, d_model=6, seq_len=8)


def test_longrope_wrong_length_for_the_model_fails_at_hooks():
  enc = pe.make("longrope", short_factor=[1.0] * 3, long_factor=[1.0] * 3, original_max_position_embeddings=64,
                factor=2.0)
  with pytest.raises(pe.ConfigError, match="3 entries but head_dim 16"):
    enc.hooks(head_dim=16, n_heads=1, d_model=16, seq_len=8)


def test_learned_table_too_short_names_the_fix():
  with pytest.raises(pe.ConfigError, match="max_length is 16; use extension"):
    pe.make("learned", max_length=16).hooks(head_dim=8, n_heads=1, d_model=8, seq_len=32)


def test_from_dict_round_trip_and_int_coercion():
  enc = pe.from_dict({"name": "yarn", "factor": 8, "original_max_position_embeddings": 256})
  assert enc.factor == 8.0 and isinstance(enc.factor, float)
  assert pe.from_dict(pe.to_dict(enc)) == enc
  with pytest.raises(pe.ConfigError, match="needs a 'name'"):
    pe.from_dict({"factor": 2})


def test_longrope_factor_file_round_trip(tmp_path):
  long = list(np.linspace(1, 8, 8))
  enc = pe.make("longrope", short_factor=[1.0] * 8, long_factor=long, original_max_position_embeddings=128,
                factor=8.0, n_hat=4)
  path = str(tmp_path / "factors.json")
  pe.save_factors(path, enc, head_dim=16)
  assert pe.load_factors(path, head_dim=16) == dataclasses.replace(enc, head_dim=16)
  with pytest.raises(pe.ConfigError, match="head_dim 16, model has 32"):
    pe.load_factors(path, head_dim=32)
  record = json.load(open(path))
  record["long_factor"][3] = 0.5
  json.dump(record, open(path, "w"))
  with pytest.raises(pe.ConfigError, match="non-decreasing"):
    pe.load_factors(path)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    pe.load_factors(str(tmp_path / "missing.json"))


def test_method_table_lists_every_method():
  out = subprocess.run([sys.executable, "-m", "rope_lab.pe"], capture_output=True, text=True, check=True).stdout
  for name in pe.REGISTRY:
    assert f"\n{name}  [" in "\n" + out
  assert "original_max_position_embeddings" in out and "(required)" in out
  assert len(pe.REGISTRY) >= 17


def test_method_table_shows_the_allowed_values_of_every_choice_field():
  from rope_lab.pe.__main__ import describe_field, describe_methods
  out = describe_methods()
  for name, cls in pe.REGISTRY.items():
    for field in dataclasses.fields(cls):
      if field.type == "str":  # every string parameter is a choice with its values listed
        allowed = field.metadata.get("choices")
        assert allowed, f"{name}.{field.name} has no declared choices"
        line = describe_field(field)
        assert line in out and all(repr(c) in line for c in allowed), line
  for value in ("'pcw'", "'grouped'", "'recurrent'", "'interpolate'", "'per_input'", "'static'", "'sampled'"):
    assert value in out


def test_choice_fields_refuse_other_values():
  with pytest.raises(pe.ConfigError, match="'evaluation' must be one of"):
    pe.make("randomized", max_position=8, evaluation="fixed")
  with pytest.raises(pe.ConfigError, match="'extension_mode' must be one of"):
    pe.make("sinusoidal", extension_mode="dynamic")
