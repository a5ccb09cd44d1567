"""Passkey and key-value line retrieval scored in one teacher-forced forward pass.

Greedy decoding reproduces an answer exactly if and only if, at every answer position,
the argmax of the next-token logits given the true answer prefix is the true next token
(by induction: while the decoded prefix equals the answer, greedy decoding is
teacher-forced). So one forward pass over prompt + answer gives both the exact-match
result of ``rope_lab.data.greedy_exact_match`` (which needs one pass per answer token)
and the answer's log-likelihood; the tests check the two agree. Only the logits at the
answer positions leave the device.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rope_lab import pe
from rope_lab.data import RetrievalExample
from rope_lab.evaluate.perplexity import DEFAULT_BATCH_TOKENS, DEFAULT_CHUNK, eval_model_config
from rope_lab.model.forward import encoding_hooks
from rope_lab.model.skeleton import ModelConfig, Transformer


@functools.lru_cache(maxsize=32)
def _answer_program(cfg: ModelConfig):
  model = Transformer(cfg)

  def score(params, tokens, hooks, answer_pos, answer_mask):
    logits = model.apply({"params": params}, tokens, hooks=hooks)
    # Logits at position t predict token t + 1.
    step_logits = jnp.take_along_axis(logits, (answer_pos - 1)[..., None], axis=1)  # [B, A, V]
    answer_ids = jnp.take_along_axis(tokens, answer_pos, axis=1)
    log_probs = jax.nn.log_softmax(step_logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, answer_ids[..., None], axis=-1)[..., 0]
    hits = jnp.argmax(step_logits, axis=-1) == answer_ids
    return picked * answer_mask, hits | (answer_mask == 0)

  return jax.jit(score)


@dataclasses.dataclass(frozen=True)
class RetrievalScore:
  """One example's result."""

  task: str
  length: int
  depth: float  # achieved depth of the needle (fraction of the prompt)
  exact: bool  # greedy decoding reproduces the whole answer
  answer_logprob: float  # sum of log p over the answer tokens (nats)
  token_accuracy: float  # fraction of answer tokens that are the argmax given the true prefix


def score_examples(cfg: ModelConfig, params, encoding: pe.Encoding,
                   examples: Sequence[RetrievalExample], *, chunk_size: int | None = DEFAULT_CHUNK,
                   batch_tokens: int = DEFAULT_BATCH_TOKENS) -> list[RetrievalScore]:
  """Scores every example under ``encoding``, resolved at each example's length."""
  by_length = collections.defaultdict(list)
  for i, example in enumerate(examples):
    by_length[len(example.tokens)].append(i)
  results: list[RetrievalScore | None] = [None] * len(examples)
  for length, indices in sorted(by_length.items()):
    hooks = encoding_hooks(cfg, encoding, length)
    program = _answer_program(eval_model_config(cfg, length, chunk_size=chunk_size))
    batch = max(1, min(len(indices), batch_tokens // length))
    answer_len = max(len(examples[i].answer_ids) for i in indices)
    for begin in range(0, len(indices), batch):
      chunk = indices[begin:begin + batch]
      rows = chunk + [chunk[-1]] * (batch - len(chunk))  # repeat a row: one shape per length
      tokens = np.stack([examples[i].tokens for i in rows])
      positions = np.zeros((batch, answer_len), np.int32)
      mask = np.zeros((batch, answer_len), np.float32)
      for r, i in enumerate(rows):
        start, n = examples[i].answer_start, len(examples[i].answer_ids)
        positions[r] = start  # padding points at a real answer token; the mask drops it
        positions[r, :n] = np.arange(start, start + n)
        mask[r, :n] = 1.0
      logprob, hits = jax.device_get(program(params, tokens, hooks, positions, mask))
      for r, i in enumerate(chunk):
        n = len(examples[i].answer_ids)
        results[i] = RetrievalScore(
            task=examples[i].task, length=length, depth=float(examples[i].depth),
            exact=bool(hits[r].all()), answer_logprob=float(logprob[r].sum()),
            token_accuracy=float(hits[r, :n].mean()))
  return results


def summarize_scores(scores: Sequence[RetrievalScore]) -> dict:
  """Accuracy, mean answer log-probability and token accuracy of a group of examples."""
  if not scores:
    raise ValueError("no retrieval scores to summarise")
  return {
      "accuracy": float(np.mean([s.exact for s in scores])),
      "answer_logprob": float(np.mean([s.answer_logprob for s in scores])),
      "token_accuracy": float(np.mean([s.token_accuracy for s in scores])),
      "examples": len(scores),
  }
