"""Mesh construction, the logical rule table, and sharded training against one device."""

import json
import subprocess

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from rope_lab.running import sharding

from rope_lab.training import loop as train
from tests import train_helpers as th


def test_mesh_shape_fills_one_free_axis_and_rejects_mismatches():
  assert sharding.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1, 1)  # three sizes: no sequence split
  assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2, 1)
  assert sharding.resolve_mesh_shape((2, 1, 1, -1), 8) == (2, 1, 1, 4)
  with pytest.raises(ValueError, match="3 sizes"):
    sharding.resolve_mesh_shape((8, 1), 8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.resolve_mesh_shape((2, 2, 1), 8)
  with pytest.raises(ValueError, match="not divisible by 3"):
    sharding.resolve_mesh_shape((3, -1, 1), 8)


def test_rules_map_parameters_and_activations_without_reusing_a_mesh_axis():
  rules = sharding.DEFAULT_RULES
  to_mesh = lambda names: nn.logical_to_mesh(PartitionSpec(*names), rules)
  assert to_mesh(("embed", "mlp")) == PartitionSpec("fsdp", "tensor")
  assert to_mesh(("vocab", "embed")) == PartitionSpec("tensor", "fsdp")
  # In activations 'batch' takes data and fsdp, so 'embed' falls back to unsharded;
  # 'length' is split over the sequence axis (a no-op when it has size 1).
  assert to_mesh(("batch", "length", "embed")) == PartitionSpec(("data", "fsdp"), "sequence", None)
  assert to_mesh(("batch", "length", "heads", "head_dim")) == PartitionSpec(
      ("data", "fsdp"), "sequence", "tensor", None)


def test_a_dimension_the_mesh_axes_do_not_divide_stays_unsharded():
  mesh = jax.make_mesh((1, 1, 1, 1), sharding.MESH_AXES)
  fitted = sharding._fit(PartitionSpec("fsdp", "tensor"), (6, 3), mesh)
  assert fitted == PartitionSpec("fsdp", "tensor")  # 1-way axes divide everything
  fake = type("FakeMesh", (), {"shape": {"data": 1, "fsdp": 2, "tensor": 4}})()
  assert sharding._fit(PartitionSpec("fsdp", "tensor"), (6, 2), fake) == PartitionSpec("fsdp", None)


def test_one_process_feeds_every_row_block():
  mesh = sharding.make_mesh((-1, 1, 1))
  assert sharding.process_row_block(sharding.batch_sharding(mesh), 8) == (0, 1)


def test_training_on_8_sharded_devices_matches_one_device(tmp_path):
  steps = 4
  worker = subprocess.Popen([th.PYTHON, "-m", "tests.sharding_worker", str(steps)],
                            cwd=th.REPO_ROOT, env=th.subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  # Meanwhile, the same run on this process's one device, without accumulation.
  train.run(th.tiny_experiment(steps=steps), str(tmp_path / "one"))
  single = [row["loss"] for row in th.read_metrics(str(tmp_path / "one"))]
  stdout, stderr = worker.communicate(timeout=300)
  assert worker.returncode == 0, stderr[-3000:]
  out = json.loads(stdout.strip().splitlines()[-1])
  assert out["steps"] == steps
  assert out["q_kernel_spec"] == str(PartitionSpec("fsdp", "tensor", None))
  assert out["k_kernel_spec"] == str(PartitionSpec("fsdp", "tensor", None))
  assert out["embed_spec"] == str(PartitionSpec("tensor", "fsdp"))
  np.testing.assert_allclose(out["losses"], single, rtol=1e-5)
  assert single[0] != single[-1]  # the parameters moved
