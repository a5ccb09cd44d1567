"""RULER's synthetic tasks (Hsieh et al. 2024, NVIDIA/RULER) as prompts in any tokenizer.

Eleven tasks, with RULER's templates, needles, haystacks and answer prefixes:

* ``niah_single_1``-``3``: one needle "One of the special magic numbers for <key> is:
  <value>." in the noise haystack (the repeated "The grass is green. ..." paragraph, one per
  line) or in the Paul Graham essays, the value a 7-digit number or a UUID;
* ``niah_multikey_1``-``3``: the needle among other needles: 3 more in the essays, or a
  haystack made only of needles (word keys and number values; UUID keys and values);
* ``niah_multivalue``: one key with 4 values; ``niah_multiquery``: 4 keys, all asked;
* ``vt``: variable tracking, a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... (4 hops) in
  the noise haystack, after a short worked example (RULER's one-shot);
* ``cwe``: the 10 most common words of a numbered list (after a worked example);
* ``fwe``: the 3 most frequent coded words of a text drawn from a zeta distribution;
* ``qa_1`` / ``qa_2``: SQuAD / HotpotQA questions among distractor documents, from a local
  file (``qa_file``).

A prompt is the *context* (instructions and haystack) followed by a *query* (the question
and RULER's answer prefix, so the answer is the very next thing the model writes). Each part
is encoded on its own and the ids concatenated, so one prefilled context serves every query
asked of it (``queries``) and the answer's position is exact in any tokenizer.

Lengths are in the model's own tokens: the prompt plus the tokens RULER lets the model
generate never exceed the target, and the haystack is sized by binary search over its count
(words of the essay or noise, coded words, list words, documents) for the largest that fits,
which lands within 1% of the target wherever one unit of the haystack (a word; for qa a
document) is under 1% of it. Everything
is a function of (task, length, seed, sample index): a ``random.Random`` seeded from those,
drawing first what does not depend on the haystack's size (keys, values, depths).

No download happens here: the essays come from the lab's asset store, words from the
``wonderwords`` package's lists (RULER's source), sentences are split by rule.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import math
import os
import random
import re
import string
import uuid
from collections.abc import Callable, Sequence

import numpy as np

from rope_lab.errors import ConfigError, DataError, MissingFileError, check

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH_HEADER = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the {type_v} afterwards.\n")
NIAH_QUESTION = "What are all the special magic {type_v} for {query} mentioned in the provided text?"
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
VT_HEADER = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = "Question: Find all variables that are assigned the value {query} in the text above."
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are: ")
CWE_HEADER = ("Below is a numbered list of words. In these words, some appear more often than others. "
              "Memorize the ones that appear most often.\n")
CWE_QUESTION = "Question: What are the 10 most common words in the above list?"
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_HEADER = ("Read the following coded text and track the frequency of each coded word. Find the three most "
              "frequently appeared coded words. ")
FWE_QUESTION = ("Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
                "frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_HEADER = ("Answer the question based on the given documents. Only give me the answer and do not output any "
             "other words.\n\nThe following are given documents.\n\n")
QA_QUESTION = ("\n\nAnswer the question based on the given documents. Only give me the answer and do not output "
               "any other words.\n\nQuestion: {query}")
QA_PREFIX = " Answer:"
QA_DOCUMENT = "Document {i}:\n{document}"
# Where RULER puts needles in an essay: 40 depths from 0% to 100%, drawn without replacement.
ESSAY_DEPTHS = tuple(int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)))
# Below this length RULER's cwe uses fewer repeats (6 and 1 instead of 30 and 3) and a smaller example.
CWE_SHORT_BELOW = 4096
# RULER's one-shot variable-tracking example is sized to 500 tokens; here never more than a
# quarter of the target, so short targets keep room for their own haystack.
VT_EXAMPLE_TOKENS = 500
QA_SOURCES = {
    "squad": "SQuAD 2.0's dev set, dev-v2.0.json (https://rajpurkar.github.io/SQuAD-explorer/)",
    "hotpotqa": "HotpotQA's dev distractor set, hotpot_dev_distractor_v1.json (https://hotpotqa.github.io/)",
}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One RULER task: its family, RULER's arguments, its generation budget and its metric."""

  name: str
  family: str  # niah, vt, cwe, fwe, qa
  tokens_to_generate: int
  metric: str  # "all" (string_match_all) or "part" (string_match_part)
  haystack: str = ""  # niah: noise, essay or needle
  key_type: str = "words"  # niah: words, numbers or uuids
  value_type: str = "numbers"
  keys: int = 1  # niah: num_needle_k, num_needle_v, num_needle_q
  values: int = 1
  asked: int = 1
  dataset: str = ""  # qa: squad or hotpotqa


def _niah(name, haystack, key_type="words", value_type="numbers", keys=1, values=1, asked=1) -> TaskSpec:
  return TaskSpec(name, "niah", 128, "all", haystack, key_type, value_type, max(keys, asked), values, asked)


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    _niah("niah_single_1", "noise"),
    _niah("niah_single_2", "essay"),
    _niah("niah_single_3", "essay", value_type="uuids"),
    _niah("niah_multikey_1", "essay", keys=4),
    _niah("niah_multikey_2", "needle"),
    _niah("niah_multikey_3", "needle", key_type="uuids", value_type="uuids"),
    _niah("niah_multivalue", "essay", values=4),
    _niah("niah_multiquery", "essay", asked=4),
    TaskSpec("vt", "vt", 30, "all"),
    TaskSpec("cwe", "cwe", 120, "all"),
    TaskSpec("fwe", "fwe", 50, "all"),
    TaskSpec("qa_1", "qa", 32, "part", dataset="squad"),
    TaskSpec("qa_2", "qa", 32, "part", dataset="hotpotqa"),
)}
SYNTHETIC_TASKS = tuple(name for name, spec in TASKS.items() if spec.family != "qa")


@dataclasses.dataclass(frozen=True, eq=False)
class Query:
  """One question asked of a context: its text (question and answer prefix) and ids."""

  text: str
  ids: np.ndarray  # int32
  answers: tuple[str, ...]  # what the metric looks for in the generated text
  target: str  # the answers as one continuation, for teacher-forced exact match
  target_ids: np.ndarray  # int32


@dataclasses.dataclass(frozen=True)
class Needle:
  """One inserted piece of the answer: its text, character offset in the context and depth
  (the fraction of the haystack's characters before it)."""

  text: str
  start: int
  depth: float


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
  """One haystack: the context prefilled once and the queries asked of it."""

  task: str
  length: int  # the target, in tokens
  seed: int
  index: int
  context: str
  context_ids: np.ndarray  # int32
  queries: tuple[Query, ...]
  needles: tuple[Needle, ...]
  haystack_size: int  # the count the binary search chose
  tokens_to_generate: int

  @property
  def haystack_id(self) -> str:
    return f"{self.task}/{self.length}/{self.seed}/{self.index}"

  @property
  def tokens(self) -> int:
    """The longest prompt plus its generation budget: what the length is checked against."""
    return len(self.context_ids) + max(len(q.ids) + max(self.tokens_to_generate, len(q.target_ids))
                                       for q in self.queries)


# ----------------------------------------------------------------------------- word lists, essays


@functools.cache
def _wonderwords(name: str) -> tuple[str, ...]:
  try:
    text = (importlib.resources.files("wonderwords") / "assets" / name).read_text(encoding="utf-8")
  except ModuleNotFoundError:
    raise MissingFileError("RULER's word lists come from the wonderwords package: pip install wonderwords") from None
  return tuple(w.rstrip() for w in text.splitlines() if w.strip())


@functools.cache
def key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(adjectives, nouns): a niah word key is ``<adjective>-<noun>``, as RULER draws them."""
  return tuple(sorted(set(_wonderwords("adjectivelist.txt")))), tuple(sorted(set(_wonderwords("nounlist.txt"))))


@functools.cache
def common_words() -> tuple[str, ...]:
  """cwe's words: wonderwords' nouns, adjectives and verbs, as RULER's."""
  return tuple(sorted(set(_wonderwords("nounlist.txt") + _wonderwords("adjectivelist.txt")
                          + _wonderwords("verblist.txt"))))


# A word ending a sentence: terminal punctuation, optionally closed by quotes or brackets.
_TERMINAL = re.compile(r"[.!?][\"')\]\u201d\u2019]*$")
_OPENS_SENTENCE = re.compile(r"[\"'(\[\u201c\u2018]*[A-Z0-9]")
_ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr vs etc e.g i.e a.m p.m u.s no inc co ltd vol fig cf approx".split())


def sentence_ends(words: Sequence[str]) -> np.ndarray:
  """bool [len(words)]: whether a sentence ends after each word (the last word always ends one).

  By rule: terminal punctuation, the next word opening with a capital, digit or quote, and
  the word not an abbreviation or an initial ("Mr.", "e.g.", "J.").
  """
  ends = np.zeros(len(words), bool)
  for i, word in enumerate(words[:-1]):
    if not _TERMINAL.search(word) or not _OPENS_SENTENCE.match(words[i + 1]):
      continue
    bare = word.rstrip("\"')]\u201d\u2019").rstrip(".!?").lower()
    ends[i] = bare not in _ABBREVIATIONS and not (len(bare) == 1 and bare.isalpha())
  if len(words):
    ends[-1] = True
  return ends


@dataclasses.dataclass(frozen=True, eq=False)
class Essay:
  """A haystack text as words (whitespace normalized, as RULER's) and where its sentences end."""

  words: tuple[str, ...]
  ends: np.ndarray

  @classmethod
  def of(cls, text: str) -> "Essay":
    words = tuple(text.split())
    check(len(words) > 0, "ruler: essay text", "non-empty", text[:40])
    return cls(words, sentence_ends(words))

  def take(self, n: int) -> tuple[list[str], list[int]]:
    """The first ``n`` words (the text repeated as needed) and the sentence starts among them."""
    reps = -(-n // len(self.words))
    words = list(self.words * reps)[:n]
    ends = np.tile(self.ends, reps)[:n]
    ends[-1:] = True
    return words, [0] + [int(i) + 1 for i in np.flatnonzero(ends)]


@functools.cache
def paul_graham_essay() -> Essay:
  """The lab's Paul Graham essays (asset store), concatenated in name order."""
  from rope_lab.data import assets  # pylint: disable=g-import-not-at-top
  essays = assets.paul_graham_essays()
  return Essay.of(" ".join(essays[name] for name in sorted(essays)))


# ----------------------------------------------------------------------------- drafts of one size


@dataclasses.dataclass
class _Draft:
  """A prompt as text: the context's pieces (haystack text and needles) and its queries."""

  header: str
  pieces: list[tuple[str, bool]]  # (text, is_needle), joined by ``joiner``
  joiner: str
  footer: str
  queries: list[tuple[str, tuple[str, ...], str]]  # (text, answers, target)

  def context(self) -> tuple[str, list[Needle]]:
    text, needles = [self.header], []
    offset, hay_chars, hay_total = len(self.header), 0, sum(len(p) for p, needle in self.pieces if not needle)
    for i, (piece, is_needle) in enumerate(self.pieces):
      if i:
        text.append(self.joiner)
        offset += len(self.joiner)
      if is_needle:
        needles.append(Needle(piece, offset, hay_chars / max(hay_total, 1)))
      else:
        hay_chars += len(piece)
      text.append(piece)
      offset += len(piece)
    return "".join(text) + self.footer, needles


def _insert(lines: list[str], items: Sequence[str], fractions: Sequence[float]) -> list[tuple[str, bool]]:
  """``lines`` (or sentences) with each of ``items`` inserted at the line boundary nearest its
  fraction of their characters (RULER counts lines or sentences instead: the same place
  where they are of one length, closer to the asked depth where they are not)."""
  offsets = np.cumsum([0] + [len(line) for line in lines])
  at = sorted((int(np.abs(offsets - f * offsets[-1]).argmin()), i) for i, f in enumerate(fractions))
  out, previous = [], 0
  for position, i in at:
    out.extend((line, False) for line in lines[previous:position])
    out.append((items[i], True))
    previous = position
  out.extend((line, False) for line in lines[previous:])
  return out


def _word_lines(line: Callable[[int], str], n: int) -> list[str]:
  """Lines ``line(0), line(1), ...`` holding ``n`` words in all, the last one cut to fit."""
  lines, count, i = [], 0, 0
  while count < n:
    words = line(i).split(" ")
    lines.append(" ".join(words[:n - count]))
    count += min(len(words), n - count)
    i += 1
  return lines


class _Draw:
  """RULER's random needles and keys from one ``random.Random``."""

  def __init__(self, rng: random.Random):
    self.rng = rng

  def __call__(self, kind: str) -> str:
    if kind == "numbers":
      return str(self.rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
      return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
    adjectives, nouns = key_words()
    pick = self.rng.randrange(len(adjectives) * len(nouns))
    return f"{adjectives[pick // len(nouns)]}-{nouns[pick % len(nouns)]}"

  def distinct(self, kind: str, count: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < count:
      value = self(kind)
      if value not in taken:
        taken.add(value)
        out.append(value)
    return out


def _niah_query(spec: TaskSpec, keys: Sequence[str], values: Sequence[str]) -> tuple[str, tuple[str, ...], str]:
  singular = len(keys) * spec.values == 1
  type_v = spec.value_type[:-1] if singular else spec.value_type
  query = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
  question, prefix = NIAH_QUESTION, NIAH_PREFIX
  if singular:  # RULER's replacements for a single answer
    question = question.replace("are all", "is").replace("are", "is")
    prefix = prefix.replace("are", "is")
  text = question.format(type_v=type_v, query=query) + prefix.format(type_v=type_v, query=query)
  return text, tuple(values), " " + ", ".join(values)


@dataclasses.dataclass(frozen=True)
class Options:
  """How samples are drawn beyond RULER's defaults.

  ``queries``: questions asked of each haystack, at most (RULER: 1); later ones ask other
  keys the haystack holds (niah only: multikey's other needles, the needle haystack's lines).
  ``split_queries``: a question about several keys (niah_multiquery) becomes one per key.
  ``depths``: niah needle depths (fractions of the haystack), one per needle; None: RULER's draw.
  ``qa_file``: the SQuAD or HotpotQA JSON file of qa_1 / qa_2.
  ``essay``: the essay haystack (None: the Paul Graham essays).
  """

  queries: int = 1
  split_queries: bool = False
  depths: tuple[float, ...] | None = None
  qa_file: str | None = None
  essay: Essay | None = None


def _niah_draft(spec: TaskSpec, seed: str, n: int, options: Options) -> _Draft:
  rng = random.Random(seed)
  draw = _Draw(rng)
  taken: set[str] = set()
  keys = draw.distinct(spec.key_type, spec.keys, taken)
  values = [draw.distinct(spec.value_type, spec.values, taken) for _ in keys]
  needles = [NEEDLE.format(type_v=spec.value_type, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
  random.Random(seed + "/order").shuffle(needles)
  count = len(needles)
  if options.depths is not None:
    check(len(options.depths) == count and all(0 <= d <= 1 for d in options.depths), f"ruler {spec.name}: depths",
          f"{count} fractions in [0, 1] (one per needle)", options.depths)
    fractions = list(options.depths)
  elif spec.haystack == "essay":
    fractions = [d / 100 for d in rng.sample(ESSAY_DEPTHS, count)]
  else:
    fractions = [rng.random() for _ in range(count)]
  asked = rng.sample(range(len(keys)), spec.asked)
  pool = {k: vs for k, vs in zip(keys, values)}
  header = NIAH_HEADER.format(type_v=spec.value_type)
  if spec.asked * spec.values == 1:
    header = NIAH_HEADER.replace("Some", "A").replace("are", "is").format(type_v=spec.value_type[:-1])
  if spec.haystack == "essay":
    words, starts = (options.essay or paul_graham_essay()).take(n)
    sentences = [" ".join(words[a:b]) for a, b in zip(starts, starts[1:])]
    pieces, joiner = _insert(sentences, needles, fractions), " "
  else:
    if spec.haystack == "noise":
      lines = _word_lines(lambda i: NOISE, n)
    else:  # a haystack of needles with other keys and values
      line_rng = _Draw(random.Random(seed + "/haystack"))
      distractors: list[tuple[str, str]] = []

      def line(i: int) -> str:
        key, value = line_rng.distinct(spec.key_type, 1, taken)[0], line_rng.distinct(spec.value_type, 1, taken)[0]
        distractors.append((key, value))
        return NEEDLE.format(type_v=spec.value_type, key=key, value=value)

      lines = _word_lines(line, n)
      full = len(lines) if len(lines[-1].split(" ")) == len(NEEDLE.split(" ")) else len(lines) - 1
      pool.update({k: [v] for k, v in distractors[:full]})
    pieces, joiner = _insert(lines, needles, fractions), "\n"
  groups = [[keys[i] for i in asked]]
  others = [k for k in pool if k not in groups[0]]
  random.Random(seed + "/queries").shuffle(others)
  while len(groups) < options.queries and len(others) >= spec.asked:
    groups.append([others.pop() for _ in range(spec.asked)])
  if options.split_queries:
    groups = [[k] for group in groups for k in group]
  queries = [_niah_query(spec, group, [v for k in group for v in pool[k]]) for group in groups]
  return _Draft(header, pieces, joiner, "\n", queries)


def _vt_chain(rng: random.Random, letters: int, hops: int, value: int) -> tuple[list[str], list[str]]:
  names: list[str] = []
  while len(names) < hops + 1:
    name = "".join(rng.choices(string.ascii_uppercase, k=letters))
    if name not in names:
      names.append(name)
  return names, [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]


def _vt_text(names, chain, fractions, n: int) -> tuple[str, str]:
  """(the context: header and noise lines with the chain, the question with its answer prefix)."""
  lines = _word_lines(lambda i: NOISE, n) if n else []
  pieces = _insert(lines, chain, sorted(fractions))
  value = chain[0].split("=")[-1].strip()
  question = VT_QUESTION.format(query=value) + VT_PREFIX.format(num_v=len(names), query=value)
  return VT_HEADER + "\n".join(p for p, _ in pieces) + "\n", question


def _vt_draft(spec: TaskSpec, seed: str, n: int, options: Options, example: str) -> _Draft:
  del spec, options
  rng = random.Random(seed)
  names, chain = _vt_chain(rng, 5, 4, rng.randint(10000, 99999))
  fractions = [rng.random() for _ in chain]
  context, question = _vt_text(names, chain, fractions, n)
  return _Draft(example + "\n" + context, [], "", "", [(question, tuple(names), " ".join(names))])


def vt_example(seed: str, n: int) -> str:
  """RULER's one-shot example: a chain of 3-letter names in ``n`` noise words, with its answer."""
  rng = random.Random(seed + "/example")
  names, chain = _vt_chain(rng, 3, 4, rng.randint(10000, 99999))
  context, question = _vt_text(names, chain, [rng.random() for _ in chain], n)
  return context + question + " " + " ".join(names) + "\n"


def _cwe_list(rng: random.Random, words: int, common: int, uncommon: int) -> tuple[str, list[str]]:
  pool = common_words()
  if words > len(pool):  # beyond wonderwords' lists: adjective-noun compounds
    adjectives, nouns = key_words()
    pool = [f"{adjectives[i // len(nouns)]}-{nouns[i % len(nouns)]}"
            for i in rng.sample(range(len(adjectives) * len(nouns)), words)]
  chosen = rng.sample(pool, words)
  listed = chosen[:10] * common + chosen[10:] * uncommon
  rng.shuffle(listed)
  order = list(dict.fromkeys(w for w in listed if w in set(chosen[:10])))
  return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), order


def _cwe_draft(spec: TaskSpec, seed: str, n: int, options: Options, length: int) -> _Draft:
  del spec, options
  short = length < CWE_SHORT_BELOW
  example_list, example_answer = _cwe_list(random.Random(seed + "/example"), *((20, 3, 1) if short else (40, 10, 3)))
  listing, answer = _cwe_list(random.Random(seed), 10 + n, *((6, 1) if short else (30, 3)))
  numbered = lambda words: " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))
  example = CWE_HEADER + example_list + "\n" + CWE_QUESTION + CWE_PREFIX + " " + numbered(example_answer)
  return _Draft(example + "\n" + CWE_HEADER + listing + "\n", [], "", "",
                [(CWE_QUESTION + CWE_PREFIX, tuple(answer), " " + numbered(answer))])


def _zeta(alpha: float) -> float:
  from scipy.special import zeta  # pylint: disable=g-import-not-at-top
  return float(zeta(alpha))


def fwe_counts(n: int, size: int, alpha: float = 2.0) -> np.ndarray:
  """How often each of ``size`` coded words appears (rank k: floor(n k^-alpha / zeta(alpha)), RULER's)."""
  return (n * np.arange(1, size + 1, dtype=np.float64) ** -alpha / _zeta(alpha)).astype(int)


def fwe_smallest(size: int, alpha: float = 2.0) -> int:
  """The smallest ``n`` whose counts rank the answer's three words strictly above the rest."""
  n = 1
  while not _clear_top_three(fwe_counts(n, size, alpha)):
    n += 1
  return n


def _clear_top_three(counts: np.ndarray) -> bool:
  return counts[3] > 0 and (len(counts) < 5 or counts[1] > counts[2] > counts[3] > counts[4])


def _fwe_size(spec: TaskSpec, length: int) -> int:
  return max((length - spec.tokens_to_generate) // 50, 5)


def _fwe_draft(spec: TaskSpec, seed: str, n: int, options: Options, length: int, alpha: float = 2.0) -> _Draft:
  del options
  rng = random.Random(seed)
  size = _fwe_size(spec, length)
  vocab: set[str] = set()
  while len(vocab) < size:
    vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
  words = sorted(vocab)
  rng.shuffle(words)
  words[0] = "..."  # the most frequent is noise
  counts = fwe_counts(n, size, alpha)
  text = [w for w, c in zip(words, counts) for _ in range(c)]
  random.Random(seed + f"/{n}").shuffle(text)
  answer = words[1:4]
  return _Draft(FWE_HEADER + " ".join(text) + "\n", [], "", "",
                [(FWE_QUESTION + FWE_PREFIX, tuple(answer), " " + ", ".join(answer))])


# ----------------------------------------------------------------------------- question answering


@functools.cache
def _qa_items(dataset: str, path: str) -> tuple[tuple[dict, ...], tuple[str, ...]]:
  """(questions, documents) of a SQuAD 2.0 or HotpotQA file, as RULER reads them."""
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"ruler qa: {path} is not JSON ({e}); expected {QA_SOURCES[dataset]}") from None
  try:
    if dataset == "squad":
      docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
      index = {c: i for i, c in enumerate(docs)}
      items = []
      for d in data["data"]:
        article = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
          for qa in p["qas"]:
            if not qa.get("is_impossible", False):
              own = index[p["context"]]
              items.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]], "context": [own],
                            "more": [i for i in article if i != own]})
    else:
      text = lambda title, sentences: f"{title}\n{''.join(sentences)}"
      docs = sorted({text(t, p) for d in data for t, p in d["context"]})
      index = {c: i for i, c in enumerate(docs)}
      items = [{"query": d["question"], "outputs": [d["answer"]], "more": [],
                "context": [index[text(t, p)] for t, p in d["context"]]} for d in data]
  except (KeyError, TypeError) as e:
    raise DataError(f"ruler qa: {path} is not {QA_SOURCES[dataset]} (missing field {e})") from None
  return tuple(items), tuple(docs)


def _qa_draft(spec: TaskSpec, seed: str, n: int, options: Options) -> _Draft:
  items, docs = _qa_items(spec.dataset, options.qa_file)
  rng = random.Random(seed)
  item = items[rng.randrange(len(items))]
  gold, more = list(item["context"]), list(item["more"])
  rng.shuffle(more)  # as RULER: the gold documents, then their article's others, then any
  taken = set(gold) | set(more)
  rest = [i for i in rng.sample(range(len(docs)), len(docs)) if i not in taken]
  chosen = (gold + more + rest)[:max(n, len(gold))]  # a larger n adds documents, never swaps them
  random.Random(seed + f"/{n}").shuffle(chosen)
  body = "\n\n".join(QA_DOCUMENT.format(i=i + 1, document=docs[d]) for i, d in enumerate(chosen))
  question = QA_QUESTION.format(query=item["query"]) + QA_PREFIX
  return _Draft(QA_HEADER + body, [], "", "", [(question, tuple(item["outputs"]), " " + item["outputs"][0])])


def _check_qa_file(spec: TaskSpec, options: Options) -> None:
  source = QA_SOURCES[spec.dataset]
  if options.qa_file is None:
    raise MissingFileError(f"ruler {spec.name} needs a local copy of {source}: download it and pass its path as "
                           "qa_file (no data set is downloaded at run time)")
  if not os.path.isfile(options.qa_file):
    raise MissingFileError(f"ruler {spec.name}: qa_file {options.qa_file!r} does not exist; it should be {source}")


# ----------------------------------------------------------------------------- sizing


Encoder = Callable[[str], Sequence[int]]


def encoder(tokenizer) -> Encoder:
  """text -> token ids from a lab tokenizer (``encode``), a ``tokenizers.Tokenizer`` or a callable."""
  encode = getattr(tokenizer, "encode", tokenizer)
  check(callable(encode), "ruler: tokenizer", "a callable or an object with encode()", tokenizer)

  def ids(text: str) -> np.ndarray:
    out = encode(text)
    return np.asarray(getattr(out, "ids", out), np.int32)

  return ids


def _sample(spec: TaskSpec, draft: _Draft, encode: Encoder, length: int, seed: int, index: int, n: int) -> Sample:
  context, needles = draft.context()
  queries = tuple(Query(text, encode(text), answers, target, encode(target)) for text, answers, target in draft.queries)
  return Sample(task=spec.name, length=length, seed=seed, index=index, context=context, context_ids=encode(context),
                queries=queries, needles=tuple(needles), haystack_size=n, tokens_to_generate=spec.tokens_to_generate)


def largest_fitting(fits: Callable[[int], bool], low: int) -> int | None:
  """The largest n >= low with ``fits(n)`` (assumed monotone), or None if ``fits(low)`` fails:
  doubling to a bound, then bisection."""
  if not fits(low):
    return None
  step = 1
  while fits(low + step):
    step *= 2
  good, bad = low + step // 2, low + step
  while bad - good > 1:
    mid = (good + bad) // 2
    good, bad = (mid, bad) if fits(mid) else (good, mid)
  return good


def make_sample(task: str, tokenizer, length: int, seed: int = 0, index: int = 0,
                options: Options = Options()) -> Sample:
  """Sample ``index`` of ``task`` at ``length`` tokens of ``tokenizer``: the largest haystack that fits."""
  check(task in TASKS, "ruler: task", f"one of {sorted(TASKS)}", task)
  check(isinstance(length, int) and length > 0, "ruler: length", "a positive int (tokens)", length)
  check(isinstance(options.queries, int) and options.queries >= 1, "ruler: queries", "an int >= 1", options.queries)
  spec, encode = TASKS[task], encoder(tokenizer)
  key = f"{task}/{length}/{seed}/{index}"
  if spec.family == "qa":
    _check_qa_file(spec, options)
  if spec.family == "vt":
    budget = min(VT_EXAMPLE_TOKENS, length // 4)
    n = largest_fitting(lambda m: len(encode(vt_example(key, m))) <= budget, 0) or 0
    example = vt_example(key, n)
    build = lambda m: _vt_draft(spec, key, m, options, example)
  elif spec.family == "niah":
    build = lambda m: _niah_draft(spec, key, m, options)
  elif spec.family == "qa":
    build = lambda m: _qa_draft(spec, key, m, options)
  else:
    maker = {"cwe": _cwe_draft, "fwe": _fwe_draft}[spec.family]
    build = lambda m: maker(spec, key, m, options, length)
  sized = functools.lru_cache(maxsize=None)(lambda m: _sample(spec, build(m), encode, length, seed, index, m))
  low = fwe_smallest(_fwe_size(spec, length)) if spec.family == "fwe" else 1 if spec.family in ("niah", "qa") else 0
  n = largest_fitting(lambda m: sized(m).tokens <= length, low)
  if n is None:
    raise ConfigError(f"ruler {task}: length {length} is too short in this tokenizer; its smallest prompt and "
                      f"generation budget take {sized(low).tokens} tokens")
  return sized(n)


def make_samples(task: str, tokenizer, length: int, samples: int, seed: int = 0,
                 options: Options = Options()) -> list[Sample]:
  """``samples`` haystacks of ``task`` at ``length`` tokens (indices 0 .. samples - 1)."""
  check(isinstance(samples, int) and samples >= 1, "ruler: samples", "an int >= 1", samples)
  return [make_sample(task, tokenizer, length, seed, i, options) for i in range(samples)]


def string_match_all(prediction: str, references: Sequence[str]) -> float:
  """RULER's string_match_all for one prediction: the fraction of references it contains
  (case-insensitive)."""
  return sum(r.lower() in prediction.lower() for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
  """RULER's string_match_part for one prediction: 1 if it contains any reference (case-insensitive)."""
  return float(max(r.lower() in prediction.lower() for r in references))


METRICS = {"all": string_match_all, "part": string_match_part}


def postprocess(prediction: str) -> str:
  """RULER's clean-up of a prediction: control characters become newlines, ends stripped."""
  return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def task_score(task: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """RULER's score of a task (0-100, 2 decimals) over predictions and their references."""
  check(len(predictions) == len(references) and predictions, "ruler: task_score", "as many predictions as references",
        (len(predictions), len(references)))
  metric = METRICS[TASKS[task].metric]
  return round(100 * math.fsum(metric(postprocess(p), r) for p, r in zip(predictions, references)) / len(predictions),
               2)
