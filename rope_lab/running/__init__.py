"""Running jobs: entry-point conventions, work directories, devices and memory.

* ``cli``: what every entry point shares (absolute paths, quiet terminal and log file, exit codes).
* ``workdir``: a work directory's lock and the config it was started with.
* ``distributed``: ``jax.distributed`` initialisation for multi-host runs.
* ``sharding``: the mesh from a config, the logical-axis rule table, constraints.
* ``memory_plan``: per-device memory of a long-context training step for a shape and mesh.
"""
