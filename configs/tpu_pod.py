"""configs/gpu_125m.py on a TPU pod slice: only the mesh and the global batch differ.

Parameters and optimizer state are fully sharded over every chip (mesh (1, -1, 1) =
data x fsdp x tensor) and the batch is split over all of them: 256 rows of 2048 tokens
(4 accumulated micro-batches of 64, as in the GPU config).
Every host runs the same command; experiments/train.py calls jax.distributed.initialize()
on a multi-host TPU slice, and JAX finds its peers there by itself.

Launch on a v4-32 / v5e-32 slice (4 or 8 hosts), with the repository on every host:

  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\\
      cd rope_lab && python -m experiments.train --config=configs/tpu_pod.py \\
      --workdir=gs://$BUCKET/rope_lab/tpu_pod"

or, the same through the sweep launcher (prints the command; ``--execute`` runs it):

  python -m experiments.sweep --config=configs/tpu_pod.py --launcher=gcloud_tpu \\
      --tpu_name=$TPU_NAME --zone=$ZONE --workdir=gs://$BUCKET/rope_lab/tpu_pod

Arguments are those of configs/gpu_125m.py (e.g. ``:finetune_8k,pe=pi``).
"""

import ml_collections

from configs import gpu_125m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = gpu_125m.get_config(arg)
  config.mesh_shape = (1, -1, 1)  # data x fsdp x tensor: fully sharded over every chip
  config.global_batch_size = 256  # rows per step over the whole slice
  return config
