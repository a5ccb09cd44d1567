"""rope_lab: positional encodings and context-window extension on one JAX skeleton."""
