"""Dataset names, catalog and file sources, and every bad input the issue lists."""

from __future__ import annotations

import hashlib
import re
import os
import time

import numpy as np
import pytest

from rope_lab.data import (DataConfig, DataConfigError, DatasetNotPreparedError, DocumentError,
                           UnknownDatasetError, get_tokenizer, load_token_store, long_documents,
                           make_train_iterator)
from rope_lab.data import corpora, sources
from tests.data.catalog_builder import prepare_catalog
from tests.data.helpers import write_files


def tree_digest(root):
  """Hash of every file's path and bytes under ``root``."""
  digest = hashlib.sha256()
  for directory, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      path = os.path.join(directory, name)
      digest.update(os.path.relpath(path, root).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def incomplete_leftovers(root):
  return [os.path.join(d, n) for d, subdirs, files in os.walk(root) for n in subdirs + files
          if ".incomplete" in n]


@pytest.mark.parametrize("name, kind", [
    ("kjv", "embedded"), ("pystdlib", "embedded"), ("tfds:pg19", "tfds"),
    ("tfds:wikipedia/20230601.en", "tfds"), ("files:/x/*.txt", "files"), ("random:", "random"),
    ("random:12", "random"), ("kjv+pystdlib", "mixture")])
def test_dataset_names(name, kind):
  assert sources.parse_dataset_name(name).kind == kind


@pytest.mark.parametrize("name", ["shakespeare", "tfds:", "files:", "random:-3", "kjv+random:"])
def test_unknown_dataset_is_named(name):
  with pytest.raises(UnknownDatasetError, match=re.escape(repr(name))):
    sources.parse_dataset_name(name)


def test_unknown_dataset_fails_when_the_config_is_built():
  with pytest.raises(UnknownDatasetError, match="DataConfig.dataset: unknown dataset 'wikitext'"):
    DataConfig(dataset="wikitext")


def test_files_dataset_reads_utf8_documents(tmp_path):
  docs = {f"d{i:02d}.txt": f"document {i} " * (i + 1) + "é\n" for i in range(30)}
  pattern = write_files(tmp_path / "docs", docs)
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  cfg = DataConfig(dataset=f"files:{pattern}", data_dir=str(data_dir))
  tokenizer = get_tokenizer(cfg)
  texts = {}
  for split in ("train", "validation", "test"):
    try:
      store = load_token_store(cfg, split, tokenizer)
    except DocumentError as e:
      assert "has no documents" in str(e)
      continue
    for i in range(store.num_docs):
      texts[store.doc_ids[i]] = tokenizer.decode(store.document(i))
  assert texts == docs  # Every file in exactly one split, byte-exact.


def test_empty_file_is_named(tmp_path):
  pattern = write_files(tmp_path, {"good.txt": "fine text\n", "blank.txt": "  \n"})
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  cfg = DataConfig(dataset=f"files:{pattern}", data_dir=str(data_dir))
  with pytest.raises(DocumentError, match=r"blank\.txt.*empty"):
    list(sources.iter_documents(sources.parse_dataset_name(cfg.dataset), "train", str(data_dir)))
  with pytest.raises(DocumentError, match=r"blank\.txt"):
    sources.read_text_file(str(tmp_path / "blank.txt"))


def test_non_utf8_file_is_named_and_nothing_is_cached(tmp_path):
  pattern = write_files(tmp_path / "docs", {f"ok{i}.txt": "good text " * 20 for i in range(20)})
  write_files(tmp_path / "docs", {"latin1.txt": "caf\xe9".encode("latin-1")})
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  cfg = DataConfig(dataset=f"files:{pattern}", data_dir=str(data_dir))
  splits_hit = []
  for split in ("train", "validation", "test"):
    try:
      load_token_store(cfg, split)
    except DocumentError as e:
      if "latin1.txt" in str(e):
        assert "not UTF-8" in str(e) and "offset 3" in str(e)
        splits_hit.append(split)
  assert len(splits_hit) == 1
  assert not incomplete_leftovers(str(data_dir))


def test_no_matching_files_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    sources.list_files(str(tmp_path / "nothing-here" / "*.txt"))


def test_missing_data_dir_is_named(tmp_path):
  cfg = DataConfig(data_dir=str(tmp_path / "missing_dir"))
  with pytest.raises(DatasetNotPreparedError, match="missing_dir"):
    make_train_iterator(cfg, seq_len=8, global_batch_size=2, seed=0)


def test_unreachable_vocab_from_config_names_the_parameter(topic_corpus):
  data_dir, dataset = topic_corpus
  cfg = DataConfig(dataset=dataset, data_dir=data_dir, tokenizer="bpe", vocab_size=200_000)
  with pytest.raises(DataConfigError, match="vocab_size=200000"):
    get_tokenizer(cfg)
  few_chars = DataConfig(dataset=dataset, data_dir=data_dir, tokenizer="bpe", vocab_size=16)
  with pytest.raises(DataConfigError, match="vocab_size=16"):
    get_tokenizer(few_chars)
  with pytest.raises(DataConfigError, match="tokenizer='byte'"):
    get_tokenizer(DataConfig(dataset="random:", tokenizer="bpe", vocab_size=512))


def test_unprepared_catalog_dataset_fails_fast(tmp_path):
  start = time.perf_counter()
  cfg = DataConfig(dataset="tfds:pg19", data_dir=str(tmp_path))
  with pytest.raises(DatasetNotPreparedError) as info:
    make_train_iterator(cfg, seq_len=8, global_batch_size=2, seed=0)
  assert time.perf_counter() - start < 5
  message = str(info.value)
  assert "pg19" in message and "tfds build" in message and str(tmp_path) in message


def test_prepared_catalog_dataset_is_read_through_tfds(tmp_path):
  prepare_catalog(str(tmp_path))
  cfg = DataConfig(dataset="tfds:rope_lab_test_catalog", data_dir=str(tmp_path))
  batch = next(make_train_iterator(cfg, seq_len=64, global_batch_size=2, seed=0))
  assert "training book" in get_tokenizer(cfg).decode(batch["inputs"][0])
  docs = long_documents(cfg, "test", min_tokens=1000)
  assert len(docs) == 1 and docs[0].num_bytes == len("held out book " * 400)
  assert docs[0].doc_id == "test 0"  # The title feature names the document.
  with pytest.raises(DocumentError, match="no split 'validation'"):
    long_documents(cfg, "validation", min_tokens=10)
  with pytest.raises(DocumentError, match="text_feature='title'"):
    load_token_store(DataConfig(dataset=cfg.dataset, data_dir=str(tmp_path),
                                text_feature="title"), "train")


def test_failed_preparation_leaves_nothing_and_keeps_prepared_data(kjv_data_dir, monkeypatch,
                                                                   tmp_path):
  before = tree_digest(kjv_data_dir)

  def broken_documents(*args, **kwargs):
    yield corpora.RawDocument("a.py", "a.py", "x = 1\n")
    raise OSError("disk vanished halfway")

  monkeypatch.setattr(corpora, "stdlib_documents", broken_documents)
  with pytest.raises(OSError, match="disk vanished"):
    sources.prepare_embedded("pystdlib", kjv_data_dir)
  assert not os.path.exists(os.path.join(kjv_data_dir, "pystdlib"))
  assert not incomplete_leftovers(kjv_data_dir)
  assert tree_digest(kjv_data_dir) == before
  # The prepared corpus still reads.
  store = load_token_store(DataConfig(data_dir=kjv_data_dir), "validation")
  assert store.num_docs == 7 and np.all(store.tokens[store.offsets[1:] - 1] == store.eod_id)


def test_mixture_holds_the_documents_of_its_parts(tmp_path):
  first = write_files(tmp_path / "a", {f"x{i}.txt": f"alpha {i}\n" for i in range(20)})
  second = write_files(tmp_path / "b+c", {f"y{i}.txt": f"beta {i}\n" for i in range(20)})
  spec = sources.parse_dataset_name(f"files:{first}+files:{second}")
  assert spec.kind == "mixture" and spec.parts[1].name == second  # '+' inside a glob stays.
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  mixed = DataConfig(dataset=f"files:{first}+files:{second}", data_dir=str(data_dir))
  store = load_token_store(mixed, "train")
  alone = [load_token_store(DataConfig(dataset=f"files:{p}", data_dir=str(data_dir)), "train")
           for p in (first, second)]
  assert store.num_docs == sum(s.num_docs for s in alone)
  assert store.num_tokens == sum(s.num_tokens for s in alone)
  assert all(doc_id.startswith(first) or doc_id.startswith(second) for doc_id in store.doc_ids)
