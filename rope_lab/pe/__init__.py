"""Positional encodings: one frozen config per method, one registry, one hooks interface.

>>> from rope_lab import pe
>>> enc = pe.make("yarn", factor=8, original_max_position_embeddings=256)
>>> hooks = enc.hooks(head_dim=64, n_heads=4, d_model=256, seq_len=2048)
"""

from rope_lab.pe.base import (  # noqa: F401
    REGISTRY,
    ConfigError,
    Encoding,
    Hooks,
    PositionMap,
    IndexMap,
    KeyWindow,
    QueryScale,
    RemapRule,
    RotaryTables,
    SelfExtend,
    XposScales,
    from_dict,
    make,
    to_dict,
)

# Importing the method modules registers them.
from rope_lab.pe import (  # noqa: F401,E402
    absolute,
    alibi,
    attention_sinks,
    frequency_scalings,
    longrope,
    per_layer,
    position_maps,
    query_scaling,
    relative_remaps,
    xpos,
)
from rope_lab.pe.longrope import load_factors, save_factors  # noqa: F401,E402
