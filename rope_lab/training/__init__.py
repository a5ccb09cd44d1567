"""Training: the loop, its compiled step, the optimizer, checkpoints, resuming and logs.

* ``loop``: ``run(exp, workdir)``: data -> jitted steps -> metrics, evaluation, checkpoints.
* ``step``: sharded state init, the train step and the eval step a run compiles.
* ``optimizer``: the learning-rate schedule and the optax chain.
* ``checkpoint``: orbax checkpoints (model state and data iterator together) and their checks.
* ``resume``: whether a work directory's checkpoint may be resumed under a config.
* ``log``: metrics files, TensorBoard and the terminal's progress line.
"""
