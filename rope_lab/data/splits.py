"""Document-level train/validation/test splits from a fixed hash of the document id.

A document's split depends only on its id (never on the order or the number of
other documents), so held-out documents stay held out when a corpus grows, and
a whole document, never a part of one, lands in exactly one split.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")

# Percent of documents per split, in SPLITS order.
DEFAULT_FRACTIONS = (80, 10, 10)


def split_bucket(doc_id: str, salt: str) -> int:
  """A number in [0, 100) fixed by ``sha256(salt + ':' + doc_id)``."""
  digest = hashlib.sha256(f"{salt}:{doc_id}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % 100


def split_of(doc_id: str, salt: str, fractions: tuple[int, int, int] = DEFAULT_FRACTIONS) -> str:
  """The split ('train', 'validation' or 'test') that ``doc_id`` belongs to."""
  if len(fractions) != 3 or sum(fractions) != 100 or min(fractions) < 0:
    raise ValueError(f"split fractions must be three non-negative percents summing to 100, "
                     f"got {fractions!r}")
  bucket = split_bucket(doc_id, salt)
  if bucket < fractions[0]:
    return "train"
  if bucket < fractions[0] + fractions[1]:
    return "validation"
  return "test"
