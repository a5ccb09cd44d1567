"""A tiny TFDS builder standing in for a catalog dataset (pg19-like: a 'book_text' feature)."""

from __future__ import annotations

import tensorflow_datasets as tfds

BOOKS = {
    "train": ["first training book " * 50, "second training book " * 80],
    "test": ["held out book " * 400],
}


class RopeLabTestCatalog(tfds.core.GeneratorBasedBuilder):
  """Registered as 'rope_lab_test_catalog'."""

  VERSION = tfds.core.Version("1.2.0")
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "book_title": tfds.features.Text(), "book_text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in BOOKS}

  def _generate_examples(self, split):
    for i, text in enumerate(BOOKS[split]):
      yield f"{split}{i}", {"book_title": f"{split} {i}", "book_text": text}


def prepare_catalog(data_dir: str) -> None:
  builder = RopeLabTestCatalog(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
