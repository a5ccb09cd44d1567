"""Synthetic long-context retrieval tasks and their scoring.

* Passkey retrieval: a random five-digit key hidden at a chosen depth in
  repeated filler sentences, followed by the question.
* Key-value line retrieval in the style of LongChat-Lines: many lines
  ``line <word-word>: REGISTER_CONTENT is <number>`` and a question about one.

Both build the token sequence part by part (each part encoded on its own and
concatenated), so the answer span and the needle span are exact token
positions for any tokenizer. Every example ends with its answer: the
prompt is ``tokens[:answer_start]`` and the answer ``tokens[answer_start:]``.
Everything is a function of the seed.

Scoring takes ``logits_fn(tokens[B, L]) -> logits[B, L, V]`` (numpy or JAX
arrays), a causal language model's next-token logits.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from rope_lab.data.errors import DataConfigError
from rope_lab.data.tokenizers import Tokenizer

PASSKEY_PREFIX = "A pass key is hidden in the text below. Find it and remember it.\n"
FILLER_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.",
                    "Here we go.", "There and back again.")
PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"

LINES_PREFIX = ("Below is a record of lines I want you to remember. Each line begins with "
                "'line <line index>' and ends with its REGISTER_CONTENT, a number. At the "
                "end of the record I will ask for the REGISTER_CONTENT of one line.\n\n")
LINE = "line {name}: REGISTER_CONTENT is {value}\n"
LINES_QUESTION = ("\nNow the record is over. What is the REGISTER_CONTENT in line {name}? "
                  "The REGISTER_CONTENT in line {name} is")
_ADJECTIVES = ("amber", "bold", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy",
               "jolly", "keen", "lively", "mellow", "narrow", "odd", "pale", "quiet", "rapid",
               "silent", "tidy", "upper", "vivid", "warm", "young", "brave", "crisp", "dense",
               "early", "fancy", "grand", "humble", "inner", "lucky", "misty", "noble", "plain",
               "royal", "sharp", "sturdy", "tender", "urban", "vast", "wild", "zesty", "bright",
               "clever", "distant", "golden")
_NOUNS = ("river", "falcon", "garden", "lantern", "meadow", "harbor", "canyon", "forest",
          "island", "summit", "valley", "comet", "pebble", "willow", "anchor", "bridge",
          "castle", "desert", "engine", "feather", "glacier", "hammer", "jungle", "kettle",
          "ladder", "magnet", "needle", "orchard", "piano", "quarry", "rocket", "saddle",
          "tunnel", "violin", "wagon", "yard", "beacon", "cottage", "dragon", "ember", "fjord",
          "goblet", "harp", "ivory", "jasper", "kiosk", "lagoon", "marble")


@dataclasses.dataclass(frozen=True, eq=False)
class RetrievalExample:
  """One synthetic example.

  Attributes:
    tokens: int32 ids of prompt + answer.
    answer_start: the answer is ``tokens[answer_start:]``.
    answer: the answer text (e.g. ``" 48213"``).
    needle_start, needle_end: token span holding the information to retrieve.
    depth: needle_start / len(tokens), the depth actually achieved.
    task: 'passkey' or 'lines'.
  """
  tokens: np.ndarray
  answer_start: int
  answer: str
  needle_start: int
  needle_end: int
  depth: float
  task: str

  @property
  def answer_ids(self) -> np.ndarray:
    return self.tokens[self.answer_start:]

  @property
  def prompt(self) -> np.ndarray:
    return self.tokens[:self.answer_start]


def _rng(seed: int, *salt: int) -> np.random.Generator:
  return np.random.default_rng([seed, *salt])


def _check_depth(depth: float) -> None:
  if not 0.0 <= depth <= 1.0:
    raise DataConfigError(f"depth must be a fraction in [0, 1], got {depth!r}")


def _filler(tokenizer: Tokenizer, budget: int) -> tuple[list[int], list[int]]:
  """Filler tokens of exactly ``budget`` ids and the sentence boundaries inside them."""
  sentences = [tokenizer.encode((" " if i else "") + s) for i, s in enumerate(FILLER_SENTENCES)]
  continued = [tokenizer.encode(" " + s) for s in FILLER_SENTENCES]
  ids, boundaries, i = [], [0], 0
  while len(ids) < budget:
    sentence = sentences[i] if i < len(sentences) else continued[i % len(continued)]
    ids.extend(sentence)
    boundaries.append(min(len(ids), budget))
    i += 1
  return ids[:budget], boundaries


def passkey_example(tokenizer: Tokenizer, length: int, depth: float, seed: int) -> RetrievalExample:
  """A passkey prompt of exactly ``length`` tokens with the key at ``depth``.

  The key sentence goes at the filler sentence boundary nearest to
  ``depth`` of the filler (0 = right after the instructions, 1 = right
  before the question).
  """
  _check_depth(depth)
  key = int(_rng(seed, length, int(round(depth * 1e6))).integers(10000, 100000))
  prefix = tokenizer.encode(PASSKEY_PREFIX)
  needle = tokenizer.encode(PASSKEY_NEEDLE.format(key=key))
  question = tokenizer.encode(PASSKEY_QUESTION)
  answer_text = f" {key}"
  answer = tokenizer.encode(answer_text)
  budget = length - len(prefix) - len(needle) - len(question) - len(answer)
  if budget < 0:
    raise DataConfigError(f"passkey length={length} is too short; the instructions, key, "
                          f"question and answer alone take {length - budget} tokens")
  filler, boundaries = _filler(tokenizer, budget)
  cut = min(boundaries, key=lambda b: (abs(b - depth * budget), b))
  tokens = prefix + filler[:cut] + needle + filler[cut:] + question + answer
  needle_start = len(prefix) + cut
  return RetrievalExample(
      tokens=np.asarray(tokens, dtype=np.int32), answer_start=len(tokens) - len(answer),
      answer=answer_text, needle_start=needle_start, needle_end=needle_start + len(needle),
      depth=needle_start / len(tokens), task="passkey")


def _line_names(rng: np.random.Generator, count: int) -> list[str]:
  total = len(_ADJECTIVES) * len(_NOUNS)
  if count > total:
    raise DataConfigError(f"lines task: {count} lines needed but only {total} distinct line "
                          "names exist; use a shorter length")
  picks = rng.choice(total, size=count, replace=False)
  return [f"{_ADJECTIVES[p // len(_NOUNS)]}-{_NOUNS[p % len(_NOUNS)]}" for p in picks]


def lines_example(tokenizer: Tokenizer, length: int, depth: float, seed: int) -> RetrievalExample:
  """A LongChat-Lines-style prompt of at most ``length`` tokens, as many lines as fit.

  The queried line is the one at ``depth`` of the record.
  """
  _check_depth(depth)
  rng = _rng(seed, length, int(round(depth * 1e6)))
  prefix = tokenizer.encode(LINES_PREFIX)
  # Lines and the question have near-constant size, so estimate the count from a
  # sample line and then drop lines until everything fits.
  sample = len(tokenizer.encode(LINE.format(name="amber-river", value=12345)))
  estimate = max((length - len(prefix)) // max(sample, 1), 1)
  names = _line_names(rng, estimate)
  values = rng.integers(10000, 100000, size=estimate)
  lines = [tokenizer.encode(LINE.format(name=n, value=v)) for n, v in zip(names, values)]
  while lines:
    target = int(round(depth * (len(lines) - 1)))
    question = tokenizer.encode(LINES_QUESTION.format(name=names[target]))
    answer_text = f" {values[target]}"
    answer = tokenizer.encode(answer_text)
    total = len(prefix) + sum(map(len, lines)) + len(question) + len(answer)
    if total <= length:
      break
    lines.pop()
  if not lines:
    raise DataConfigError(f"lines length={length} is too short for even one line")
  needle_start = len(prefix) + sum(map(len, lines[:target]))
  tokens = prefix + [t for line in lines for t in line] + question + answer
  return RetrievalExample(
      tokens=np.asarray(tokens, dtype=np.int32), answer_start=len(tokens) - len(answer),
      answer=answer_text, needle_start=needle_start,
      needle_end=needle_start + len(lines[target]), depth=needle_start / len(tokens),
      task="lines")


# ---------------------------------------------------------------------------
# Short tasks a tiny model can learn in pretraining: the templates fit well inside a
# training row of 128-256 bytes, so rows of them can be mixed into pretraining, and
# evaluation can start inside the training length.

SHORT_NEEDLE = " key {key}."
SHORT_QUESTION = " key?"
MQAR_KEYS = tuple(chr(c) + chr(d) for c in range(ord("a"), ord("z") + 1) for d in range(ord("a"), ord("z") + 1))


def short_passkey_example(tokenizer: Tokenizer, length: int, depth: float, seed: int) -> RetrievalExample:
  """A passkey prompt of exactly ``length`` tokens with a short template: filler sentences with
  `` key NNNNN.`` at the boundary nearest ``depth``, then `` key?`` and the answer `` NNNNN``."""
  _check_depth(depth)
  key = int(_rng(seed, length, int(round(depth * 1e6)), 11).integers(10000, 100000))
  needle = tokenizer.encode(SHORT_NEEDLE.format(key=key))
  question = tokenizer.encode(SHORT_QUESTION)
  answer_text = f" {key}"
  answer = tokenizer.encode(answer_text)
  budget = length - len(needle) - len(question) - len(answer)
  if budget < 0:
    raise DataConfigError(f"short passkey length={length} is too short; the key, question and answer "
                          f"alone take {length - budget} tokens")
  filler, boundaries = _filler(tokenizer, budget)
  cut = min(boundaries, key=lambda b: (abs(b - depth * budget), b))
  tokens = filler[:cut] + needle + filler[cut:] + question + answer
  return RetrievalExample(
      tokens=np.asarray(tokens, dtype=np.int32), answer_start=len(tokens) - len(answer),
      answer=answer_text, needle_start=cut, needle_end=cut + len(needle), depth=cut / len(tokens),
      task="short_passkey")


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingRow:
  """A synthetic training sequence and the mask of the tokens its loss is on (the answers)."""
  tokens: np.ndarray      # int32 [n]
  answer_mask: np.ndarray  # float32 [n]: 1 where tokens[i] is part of an answer


def mqar_row(tokenizer: Tokenizer, length: int, pairs: int, queries: int, seed: int,
             depth: float = 0.5) -> tuple[TrainingRow, RetrievalExample]:
  """Multi-query associative recall (Zoology's MQAR, as text): ``pairs`` key-value pairs
  `` ab=3``, filler, then ``queries`` of the keys `` ab?`` each followed by its value `` 3``.

  The sequence has exactly ``length`` tokens; the pairs start at ``depth`` of the room the filler
  leaves (0: at the start). Returns the training row (loss on every queried value) and, for
  evaluation, the example whose answer is the last query's value.
  """
  _check_depth(depth)
  if not 1 <= queries <= pairs <= len(MQAR_KEYS):
    raise DataConfigError(f"mqar needs 1 <= queries <= pairs <= {len(MQAR_KEYS)}, got queries={queries}, "
                          f"pairs={pairs}")
  rng = _rng(seed, length, pairs, queries, 13)
  keys = [MQAR_KEYS[i] for i in rng.choice(len(MQAR_KEYS), size=pairs, replace=False)]
  values = rng.integers(0, 10, size=pairs)
  listing = [t for k, v in zip(keys, values) for t in tokenizer.encode(f" {k}={v}")]
  asked = rng.choice(pairs, size=queries, replace=False)
  question_parts, answers = [], []
  for i in asked:
    question_parts.append(tokenizer.encode(f" {keys[i]}?"))
    answers.append(tokenizer.encode(f" {values[i]}"))
  tail = sum(len(q) + len(a) for q, a in zip(question_parts, answers))
  budget = length - len(listing) - tail
  if budget < 0:
    raise DataConfigError(f"mqar length={length} is too short; {pairs} pairs and {queries} queries take "
                          f"{length - budget} tokens")
  filler, _ = _filler(tokenizer, budget)
  before = int(round(depth * budget))
  tokens = filler[:before] + listing + filler[before:]
  mask = [0.0] * len(tokens)
  for question, answer in zip(question_parts, answers):
    tokens += question + answer
    mask += [0.0] * len(question) + [1.0] * len(answer)
  last = asked[-1]
  row = TrainingRow(np.asarray(tokens, np.int32), np.asarray(mask, np.float32))
  example = RetrievalExample(
      tokens=row.tokens, answer_start=len(tokens) - len(answers[-1]), answer=f" {values[last]}",
      needle_start=before + sum(len(tokenizer.encode(f" {k}={v}")) for k, v in zip(keys[:last], values[:last])),
      needle_end=before + sum(len(tokenizer.encode(f" {k}={v}")) for k, v in zip(keys[:last + 1], values[:last + 1])),
      depth=before / len(tokens), task="mqar")
  return row, example


def mqar_example(tokenizer: Tokenizer, length: int, depth: float, seed: int, pairs: int = 8,
                 queries: int = 4) -> RetrievalExample:
  """The evaluation side of :func:`mqar_row` (the answer is the last query's value)."""
  return mqar_row(tokenizer, length, pairs, queries, seed, depth)[1]


def retrieval_training_row(task: str, tokenizer: Tokenizer, length: int, rng: np.random.Generator) -> TrainingRow:
  """One pretraining row of ``length`` tokens of ``task`` ('short_passkey' or 'mqar'), loss on the
  answers only, at a random depth and with a seed drawn from ``rng``."""
  depth, seed = float(rng.random()), int(rng.integers(1 << 30))
  if task == "mqar":
    return mqar_row(tokenizer, length, 8, 4, seed, depth)[0]
  if task == "short_passkey":
    example = short_passkey_example(tokenizer, length, depth, seed)
    mask = np.zeros(len(example.tokens), np.float32)
    mask[example.answer_start:] = 1.0
    return TrainingRow(example.tokens, mask)
  raise DataConfigError(f"retrieval training task must be 'short_passkey' or 'mqar', got {task!r}")


def task_grid(task: str, tokenizer: Tokenizer, lengths: Sequence[int], depths: Sequence[float],
              seed: int = 0, samples: int = 1) -> list[RetrievalExample]:
  """``samples`` examples per (length, depth) cell, each with its own derived seed."""
  makers = {"passkey": passkey_example, "lines": lines_example, "short_passkey": short_passkey_example,
            "mqar": mqar_example}
  if task not in makers:
    raise DataConfigError(f"task must be one of {sorted(makers)}, got {task!r}")
  examples = []
  for length in lengths:
    for depth in depths:
      for sample in range(samples):
        examples.append(makers[task](tokenizer, length, depth, seed * 1_000_003 + sample))
  return examples


# ---------------------------------------------------------------------------
# Scoring.

LogitsFn = Callable[[np.ndarray], np.ndarray]


def _batches_by_length(examples: Sequence[RetrievalExample], batch_size: int):
  """Indices of equal-length examples in groups of at most ``batch_size``."""
  groups = collections.defaultdict(list)
  for i, example in enumerate(examples):
    groups[len(example.tokens)].append(i)
  for indices in groups.values():
    for begin in range(0, len(indices), batch_size):
      yield indices[begin:begin + batch_size]


def _logits(logits_fn: LogitsFn, tokens: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits_fn(tokens))
  if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
    raise ValueError(f"logits_fn must map tokens {tokens.shape} to logits [B, L, V], "
                     f"got {logits.shape}")
  return logits


def answer_log_likelihood(logits_fn: LogitsFn, examples: Sequence[RetrievalExample],
                          batch_size: int = 8) -> np.ndarray:
  """Sum over answer tokens of log p(answer token | everything before it), per example."""
  scores = np.zeros(len(examples), dtype=np.float64)
  for indices in _batches_by_length(examples, batch_size):
    tokens = np.stack([examples[i].tokens for i in indices])
    logits = _logits(logits_fn, tokens)
    for row, i in enumerate(indices):
      start = examples[i].answer_start
      # Logits at position t predict token t + 1.
      step_logits = logits[row, start - 1:len(tokens[row]) - 1].astype(np.float64)
      peak = step_logits.max(axis=-1, keepdims=True)
      log_z = peak[:, 0] + np.log(np.exp(step_logits - peak).sum(axis=-1))
      picked = step_logits[np.arange(len(step_logits)), tokens[row, start:]]
      scores[i] = float((picked - log_z).sum())
  return scores


def greedy_exact_match(logits_fn: LogitsFn, examples: Sequence[RetrievalExample],
                       batch_size: int = 8, pad_id: int = 0) -> np.ndarray:
  """Whether greedy decoding after each prompt reproduces the answer exactly.

  Decodes one token per ``logits_fn`` call on a fixed-length buffer (prompt,
  then the tokens decoded so far, then ``pad_id``), so the shape never
  changes; a causal model's logit at position t ignores the later padding.
  """
  correct = np.zeros(len(examples), dtype=bool)
  for indices in _batches_by_length(examples, batch_size):
    buffer = np.stack([examples[i].tokens for i in indices])
    starts = np.asarray([examples[i].answer_start for i in indices])
    answer_lengths = buffer.shape[1] - starts
    for row, start in enumerate(starts):
      buffer[row, start:] = pad_id
    for step in range(int(answer_lengths.max())):
      logits = _logits(logits_fn, buffer)
      for row, start in enumerate(starts):
        if step < answer_lengths[row]:
          buffer[row, start + step] = int(np.argmax(logits[row, start + step - 1]))
    for row, i in enumerate(indices):
      correct[i] = np.array_equal(buffer[row, starts[row]:], examples[i].answer_ids)
  return correct
