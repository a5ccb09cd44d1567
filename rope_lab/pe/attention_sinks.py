"""StreamingLLM (Xiao et al. 2023): attention sinks plus a recent window, evaluated on a full sequence.

The reference (mit-han-lab/streaming-llm, ``kv_cache.StartRecentKVCache`` and
``pos_shift/modify_llama.py``, driven token by token by ``examples/eval_long_ppl.py``)
keeps, between steps, the first ``sinks`` tokens and the ``window`` most recent ones. The
next token is appended to that cache and attends to all of it, so the query at text
position t sees keys j < sinks and t - window <= j <= t. Keys are cached un-rotated and
rotated at their place in the cache, the query at the cache length, min(t, sinks + window).
Relative distances are therefore t - j inside the recent window and
min(t, sinks + window) - j for a sink j beyond it. As rope_lab hooks: a key window of
window + 1 tokens with ``sinks`` always-visible first positions, and two remap rules
(identity for d <= window; otherwise q at min(p, sinks + window), k at its position).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rope_lab.pe.base import KeyWindow, check, register, required
from rope_lab.pe.relative_remaps import RemappedRoPE, positions_map, remap_rule


@register
@dataclasses.dataclass(frozen=True)
class StreamingLLM(RemappedRoPE):
  """StreamingLLM: the first ``sinks`` tokens and the last ``window`` ones, at positions inside the cache.

  ``window`` is the reference's ``recent_size``: each query sees itself plus the
  ``window`` tokens before it, and the sinks; the paper's 1024-token cache is sinks=4,
  window=1020. The usual RoPE parameters (base, rotary_fraction, layout) apply.
  """

  name = "streaming_llm"
  paper = "Xiao et al. 2023, Efficient Streaming Language Models with Attention Sinks (StreamingLLM)"
  changes = "key window with attention sinks; sink distances at cache positions (remap)"

  sinks: int = 4  # start_size: first tokens every query keeps
  window: int | None = required()  # recent_size: most recent tokens kept before the current one

  def validate(self):
    super().validate()
    check(self.sinks >= 0, self.name, "sinks", ">= 0", self.sinks)
    check(self.window is not None and self.window >= 1, self.name, "window", ">= 1", self.window)

  def cache_size(self) -> int:
    """Tokens the reference cache holds between steps: sinks + window."""
    return self.sinks + self.window

  def rules(self, head_dim, seq_len):
    return [remap_rule(positions_map(), positions_map(), high=self.window + 1),
            remap_rule(positions_map(cap=self.cache_size()), positions_map())]

  def extra_hooks(self, **kwargs):
    out = super().extra_hooks(**kwargs)
    out["key_window"] = KeyWindow(size=jnp.int32(self.window + 1), sinks=jnp.int32(self.sinks))
    return out
