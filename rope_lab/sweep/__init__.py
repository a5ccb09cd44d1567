"""Sweeps: a config file's ``get_sweep(arg)`` expanded into runs and started by a launcher.

``runs``: points -> runs with stable names, directories and commands (checked before
anything starts); ``local``: this machine, N at a time, resumable; ``remote``: ``xpk``
workloads and ``gcloud`` TPU VM commands; ``summary``: the table and figure at the end.
"""

from rope_lab.sweep.runs import Run, expand  # noqa: F401
