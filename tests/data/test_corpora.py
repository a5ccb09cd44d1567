"""The embedded corpora: document-level hash splits and the TFDS builders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from rope_lab.data import DataConfig, corpora, get_tokenizer
from rope_lab.data.builders import Kjv, KjvChapters
from rope_lab.data.splits import SPLITS, split_bucket, split_of


def test_split_is_a_fixed_function_of_the_id():
  assert split_bucket("doc", "salt") == split_bucket("doc", "salt")
  assert {split_of(f"doc{i}", "salt") for i in range(200)} == set(SPLITS)
  shares = [sum(split_of(f"doc{i}", "s") == s for i in range(2000)) / 2000 for s in SPLITS]
  assert shares[0] == pytest.approx(0.8, abs=0.04) and shares[1] == pytest.approx(0.1, abs=0.03)


def _split_ids(data_dir):
  builder = Kjv(data_dir=data_dir, file_format="array_record")
  ids = {}
  for split in SPLITS:
    source = builder.as_data_source(split=split)
    ids[split] = [source[i]["id"].decode() for i in range(len(source))]
  return builder, ids


def test_kjv_splits_are_disjoint_and_complete(kjv_data_dir):
  builder, ids = _split_ids(kjv_data_dir)
  all_ids = [i for split in SPLITS for i in ids[split]]
  assert len(all_ids) == len(set(all_ids)) == 66
  for split in SPLITS:
    assert all(split_of(i, Kjv.SPLIT_SALT) == split for i in ids[split])
  assert builder.info.file_format.value == "array_record"


def test_kjv_held_out_splits_have_book_length_documents(kjv_data_dir):
  builder = Kjv(data_dir=kjv_data_dir, file_format="array_record")
  for split in ("validation", "test"):
    source = builder.as_data_source(split=split)
    long_books = sum(len(source[i]["text"]) > 100_000 for i in range(len(source)))
    assert long_books >= 3, split


def test_kjv_documents_are_books_with_verses():
  books = list(corpora.kjv_documents())
  assert len(books) == 66 and books[0].doc_id == "1-01-Genesis"
  assert books[0].text.splitlines()[2].startswith("1:1 In the beginning")


def test_kjv_chapters_concatenate_to_their_books():
  books = {d.doc_id: d.text for d in corpora.kjv_documents()}
  chapters = list(corpora.kjv_chapter_documents())
  assert len(chapters) == 1189  # the Protestant canon's chapter count
  assert chapters[0].doc_id == "1-01-Genesis/001" and chapters[-1].doc_id == "2-27-Revelation/022"
  assert chapters[1].text.startswith("2:1 ")  # a later chapter starts with its first verse
  joined = {}
  for chapter in chapters:
    joined[corpora.kjv_book_of(chapter.doc_id)] = joined.get(corpora.kjv_book_of(chapter.doc_id), "") + chapter.text
  assert joined == books


def test_kjv_chapters_keep_their_books_splits_and_tokenizer(kjv_data_dir, tmp_path):
  """In-Context Pretraining's chapter documents hold out exactly kjv's held-out books, and a
  SentencePiece model trained on them is kjv's (the study scores every model on kjv's tokens)."""
  _, book_ids = _split_ids(kjv_data_dir)
  builder = KjvChapters(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  for split in SPLITS:
    source = builder.as_data_source(split=split)
    books = {corpora.kjv_book_of(source[i]["id"].decode()) for i in range(len(source))}
    assert books == set(book_ids[split]), split
  (tmp_path / "data").mkdir()
  bpe = lambda dataset: get_tokenizer(DataConfig(dataset=dataset, tokenizer="bpe", vocab_size=512,
                                                 data_dir=str(tmp_path / "data")))
  assert bpe("kjv_chapters").cache_key == bpe("kjv").cache_key


def test_stdlib_files_exclude_tests_and_site_packages():
  files = corpora.stdlib_files()
  assert "json/decoder.py" in files and len(files) > 300
  assert not any(part in ("test", "tests", "site-packages", "idle_test")
                 for f in files for part in f.split("/")[:-1])


def test_preparing_works_without_importlib_resources(tmp_path):
  """TFDS imports importlib_resources without declaring it; users must never need it."""
  script = textwrap.dedent(f"""
      import sys
      class Block:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] == "importlib_resources":
            raise ModuleNotFoundError("No module named " + repr(name))
      sys.meta_path.insert(0, Block())
      from rope_lab.data import sources
      sources.prepare_embedded("kjv", {str(tmp_path)!r})
      print("prepared")
  """)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=root, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.path.isfile(tmp_path / "kjv" / "1.0.0" / "dataset_info.json")
