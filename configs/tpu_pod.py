"""configs/gpu_125m.py on a TPU pod slice: only the mesh and the global batch differ.

Parameters and optimizer state are fully sharded over every chip (mesh (1, -1, 1) =
data x fsdp x tensor) and the batch is split over all of them: 256 rows of 2048 tokens
(4 accumulated micro-batches of 64, as in the GPU config).
Every host runs the same command; JAX finds its peers on a TPU VM by itself.

Launch on a v4-32 / v5e-32 slice (4 or 8 hosts), with the repository on every host:

  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\\
      cd rope_lab && python -m experiments.train --config=configs/tpu_pod.py \\
      --workdir=gs://$BUCKET/rope_lab/tpu_pod"

Variants are those of configs/gpu_125m.py (e.g. ``:finetune_8k``).
"""

import importlib.util
import os


def _gpu_config_module():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_125m.py")
  spec = importlib.util.spec_from_file_location("configs_gpu_125m", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  config = _gpu_config_module().get_config(arg)
  config.mesh_shape = (1, -1, 1)
  config.global_batch_size = 256
  return config
