"""Interoperation with other libraries' configs and checkpoints."""
