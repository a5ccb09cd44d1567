"""The real-model study's measurements: losses and attention mass from one forward pass,
and retrieval by greedy generation.

* :func:`score_window`: one document window through the evaluation path (chunked
  attention), returning every token's loss and, for the last ``n_queries`` queries before
  each requested end, the attention mass by relative distance (log2 bins), averaged over
  heads and those queries, per layer. The masses come from q/k captured at the
  projections and scored with the attention paths' own rotation and masks
  (``attention.rotate_cross`` / ``block_logits``), so remap rules, SelfExtend and query
  scales are honoured.
* :func:`passkey_prompt` / :func:`needle_prompt`: retrieval prompts of an exact token
  length in the model's tokenizer; :func:`retrieve` decodes greedily and scores them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rope_lab import pe

from rope_lab.model import attention

from rope_lab.model import generate
from rope_lab.data import synthetic
from rope_lab.evaluate.attention_maps import is_qk_projection, distance_bins
from rope_lab.evaluate.perplexity import LOSS_BLOCK_TOKENS, eval_model_config
from rope_lab.model.forward import blockwise_token_losses, encoding_hooks
from rope_lab.model.skeleton import ModelConfig, Transformer, token_meta
from rope_lab.pe.rotary import cos_sin


@functools.lru_cache(maxsize=16)
def _window_program(cfg: ModelConfig, query_ends: tuple[int, ...], n_queries: int, edges: tuple[int, ...]):
  # Unrolled layers: flax captures each layer's q/k under its name ('layers_{i}'), which a
  # scan over stacked weights (cfg.scan_layers) does not give.
  model = Transformer(dataclasses.replace(cfg, scan_layers=False))
  edges_arr = np.asarray(edges)

  def score(params, inputs_1xL, targets_1xL, hooks):
    hidden, state = model.apply({"params": params}, inputs_1xL, hooks=hooks, capture_intermediates=is_qk_projection,
                                mutable=["intermediates"], return_hidden=True)
    losses = blockwise_token_losses(cfg, params, hidden, targets_1xL, block_tokens=LOSS_BLOCK_TOKENS)[0]
    layers = state["intermediates"]
    length = inputs_1xL.shape[1]
    meta, _ = token_meta(hooks, jnp.arange(length, dtype=jnp.int32)[None], None, segment_masking=False, rng=None)
    masses = []
    for end in query_ends:
      q_meta = attention.TokenMeta(*(x[:, end - n_queries:end] for x in meta))
      k_meta = attention.TokenMeta(*(x[:, :end] for x in meta))
      distance = (jnp.arange(end - n_queries, end)[:, None] - jnp.arange(end)[None, :])
      bin_of_pair = (jnp.searchsorted(jnp.asarray(edges_arr), distance, side="right") - 1).reshape(-1)
      per_layer = []
      for i in range(cfg.n_layers):
        captured = layers[f"layers_{i}"]["attn"]
        q = captured["q"]["__call__"][0][:, end - n_queries:end]
        k = captured["k"]["__call__"][0][:, :end]
        rot = attention.rotate_cross(hooks, q, k, q_meta.positions, k_meta.positions)
        logits_qk, _ = attention.block_logits(rot, q_meta, k_meta, hooks, cfg.logit_soft_cap)
        probs = jax.nn.softmax(logits_qk, axis=-1).mean(axis=(0, 1, 2))  # [n_queries, end]
        mass = jax.ops.segment_sum(probs.reshape(-1), bin_of_pair, num_segments=len(edges) - 1)
        per_layer.append(mass / n_queries)
      masses.append(jnp.stack(per_layer))
    return losses, masses

  return jax.jit(score)


@dataclasses.dataclass(frozen=True)
class WindowScore:
  losses: np.ndarray  # float32 [L]: next-token loss (nats) of every position
  attention: dict  # end -> float64 [n_layers, bins] attention mass by distance bin


def attention_edges(max_length: int) -> tuple[int, ...]:
  return tuple(int(e) for e in distance_bins(max_length))


def score_window(cfg: ModelConfig, params, tokens: np.ndarray, hooks: pe.Hooks, *, query_ends=(),
                 n_queries: int = 64, max_length: int | None = None) -> WindowScore:
  """Losses of ``tokens[1:]`` given ``tokens[:-1]`` (L = len(tokens) - 1), and attention masses."""
  length = len(tokens) - 1
  edges = attention_edges(max_length or length)
  program = _window_program(eval_model_config(cfg, length), tuple(query_ends), n_queries, edges)
  inputs = jnp.asarray(tokens[None, :-1], jnp.int32)
  targets = jnp.asarray(tokens[None, 1:], jnp.int32)
  losses, masses = jax.device_get(program(params, inputs, targets, hooks))
  return WindowScore(losses=np.asarray(losses, np.float32),
                     attention={end: np.asarray(m, np.float64) for end, m in zip(query_ends, masses)})


# Angles computed at two lengths go through differently sized coarse/fine tables, so they
# agree to float32 rounding, not bit for bit.
ANGLE_TOLERANCE = 1e-6


def acts_alike(cfg: ModelConfig, a: pe.Encoding, length_a: int, b: pe.Encoding, length_b: int, prefix: int) -> bool:
  """Whether encoding ``a`` resolved at ``length_a`` and ``b`` at ``length_b`` score the first
  ``prefix`` tokens alike: the same rotation angles (to float32 rounding) at every position
  those tokens are rotated at, and identical other hooks (scales, maps, remap rules, masks).
  Then one forward pass serves both."""
  ha = encoding_hooks(cfg, a, length_a).replace(seq_len=0)
  hb = encoding_hooks(cfg, b, length_b).replace(seq_len=0)
  if (ha.rotary is None) != (hb.rotary is None):
    return False
  if ha.rotary is not None:
    reach = max(prefix, a.max_rotary_position(prefix), b.max_rotary_position(prefix))
    covered = lambda t: t.cos_coarse.shape[-2] * t.fine_size
    if ha.rotary.layout != hb.rotary.layout or reach > min(covered(ha.rotary), covered(hb.rotary)):
      return False
    positions = jnp.arange(reach, dtype=jnp.int32)
    for x, y in zip(cos_sin(ha.rotary, positions), cos_sin(hb.rotary, positions)):
      if not np.allclose(np.asarray(x), np.asarray(y), rtol=0, atol=ANGLE_TOLERANCE):
        return False
  (leaves_a, tree_a), (leaves_b, tree_b) = (jax.tree_util.tree_flatten(h.replace(rotary=None)) for h in (ha, hb))
  return tree_a == tree_b and all(np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
                                  for x, y in zip(leaves_a, leaves_b))


# ----------------------------------------------------------------------------- retrieval

NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
NEEDLE_QUESTION = "\n\nWhat is the best thing to do in San Francisco? The best thing to do in San Francisco is"
NEEDLE_ANSWER = "dolores park"  # presence of this phrase in the generated text (Giraffe's presence accuracy)


@dataclasses.dataclass(frozen=True)
class Prompt:
  tokens: list[int]
  answer: str  # what must appear: the passkey's digits, or the needle's phrase
  depth: float  # where the needle starts, as a fraction of the prompt
  max_new_tokens: int


def passkey_prompt(tokenizer, length: int, depth: float, seed: int) -> Prompt:
  """The lab's passkey prompt (``data.synthetic``) in this tokenizer, ``length`` tokens with the answer."""
  example = synthetic.passkey_example(tokenizer, length, depth, seed)
  return Prompt(tokens=[int(t) for t in example.prompt], answer=example.answer.strip(), depth=example.depth,
                max_new_tokens=len(example.answer_ids) + 2)


def needle_prompt(tokenizer, haystack_ids: np.ndarray, length: int, depth: float) -> Prompt:
  """Needle-in-a-haystack: essay tokens with the needle sentence after the sentence end nearest
  ``depth``, then the question; ``length`` tokens in all."""
  needle = tokenizer.encode(" " + NEEDLE)
  question = tokenizer.encode(NEEDLE_QUESTION)
  budget = length - len(needle) - len(question)
  if budget <= 0 or len(haystack_ids) < budget:
    raise ValueError(f"needle length {length}: the haystack holds {len(haystack_ids)} tokens, {budget} needed")
  hay = [int(t) for t in haystack_ids[:budget]]
  target = int(depth * budget)
  ends = [i + 1 for i in range(budget) if "." in tokenizer.decode([hay[i]])] or [target]
  cut = min(ends, key=lambda i: (abs(i - target), i))
  tokens = hay[:cut] + needle + hay[cut:] + question
  return Prompt(tokens=tokens, answer=NEEDLE_ANSWER, depth=cut / len(tokens), max_new_tokens=24)


def retrieve(model, prompt: Prompt, tokenizer, cache: str) -> tuple[bool, str]:
  """(whether the answer appears in the greedy continuation, the continuation's text)."""
  new = generate.generate(model, [prompt.tokens], prompt.max_new_tokens, cache=cache)[0]
  text = tokenizer.decode(new)
  return prompt.answer.lower() in text.lower(), text
