"""Trains the tiny experiment on a (2, 2, 2) mesh of 8 simulated CPU devices.

Started by tests/test_sharding.py in its own process, because the device count must be
fixed (XLA_FLAGS) before JAX starts. Prints one JSON line with the losses and the
shardings of two parameters.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys
import tempfile

import jax

from rope_lab.training import loop as train
from tests import train_helpers as th

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 4


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  # data x fsdp x tensor (the 2 kv heads split over tensor=2) and two micro-batches a step.
  exp = th.tiny_experiment(steps=STEPS, mesh_shape=(2, 2, 2), grad_accum_steps=2)
  with tempfile.TemporaryDirectory() as tmp:
    result = train.run(exp, tmp)
    losses = [row["loss"] for row in th.read_metrics(tmp)]
  params = train.build_program(exp).setup.state_shardings.params
  out = {
      "steps": result.step,
      "losses": losses,
      "q_kernel_spec": str(params["layers_0"]["attn"]["q"]["kernel"].spec),
      "k_kernel_spec": str(params["layers_0"]["attn"]["k"]["kernel"].spec),
      "embed_spec": str(params["embed"]["embedding"].spec),
  }
  sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
  main()
