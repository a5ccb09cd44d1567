"""Dataset names, preparation of the embedded corpora, and reading documents.

Names understood everywhere a dataset is named:

* ``kjv``, ``pystdlib``: embedded corpora, TFDS builders in ``builders.py``,
  prepared offline into the data directory on first use;
* ``tfds:<name>[/<config>]``: any TFDS catalog dataset already prepared (in
  array_record format) under the data directory, read with
  ``tfds.builder_from_directory(...).as_data_source(split)``;
* ``files:<glob>``: local UTF-8 text files, one document per file, split by a
  hash of the path relative to the glob's fixed prefix;
* ``random:[<num_docs>]``: random bytes, made in memory (handled by the token
  store, it has no text);
* ``a+b``: the documents of ``a`` followed by those of ``b``.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from rope_lab.data import integrity
from rope_lab.data.errors import DatasetNotPreparedError, DocumentError, UnknownDatasetError
from rope_lab.data.splits import split_of

EMBEDDED_DATASETS = ("kjv", "kjv_chapters", "pystdlib")
FILES_SPLIT_SALT = "files-v1"
_TEXT_FEATURE_PREFERENCE = ("text", "book_text", "content", "article", "document")
_ID_FEATURE_PREFERENCE = ("id", "doc_id", "book_id", "url", "title", "book_title")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A parsed dataset name.

  Attributes:
    kind: 'embedded', 'tfds', 'files', 'random' or 'mixture'.
    name: embedded or catalog dataset name; the glob for 'files'.
    config: catalog builder config ('' when none).
    num_docs: documents of a 'random' dataset.
    parts: the component specs of a 'mixture'.
  """
  kind: str
  name: str = ""
  config: str = ""
  num_docs: int = 0
  parts: tuple["DatasetSpec", ...] = ()


def known_dataset_names() -> str:
  return ("'kjv', 'kjv_chapters', 'pystdlib', 'a+b' mixtures, 'tfds:<name>[/<config>]', 'files:<glob>' "
          "or 'random:[<num_docs>]'")


_PART_PREFIXES = EMBEDDED_DATASETS + ("tfds:", "files:", "random:")


def _mixture_parts(name: str) -> list[str]:
  """Splits ``a+b`` at each '+' that starts a new dataset name.

  A '+' followed by anything else stays inside the part (a glob may hold one).
  """
  parts: list[str] = []
  for piece in name.split("+"):
    if parts and not piece.startswith(_PART_PREFIXES):
      parts[-1] += "+" + piece
    else:
      parts.append(piece)
  return parts


def parse_dataset_name(name: str) -> DatasetSpec:
  """Parses a dataset name; an unknown one raises UnknownDatasetError naming it."""
  name = name.strip()
  parts = _mixture_parts(name)
  if len(parts) > 1:
    specs = tuple(parse_dataset_name(part) for part in parts)
    if any(spec.kind == "random" for spec in specs):
      raise UnknownDatasetError(f"dataset {name!r}: 'random:' cannot be part of a mixture")
    return DatasetSpec(kind="mixture", name=name, parts=specs)
  if name.startswith("files:"):
    pattern = name[len("files:"):]
    if not pattern:
      raise UnknownDatasetError(f"dataset {name!r}: 'files:' needs a glob, e.g. 'files:docs/*.txt'")
    return DatasetSpec(kind="files", name=pattern)
  if name in EMBEDDED_DATASETS:
    return DatasetSpec(kind="embedded", name=name)
  if name.startswith("tfds:"):
    catalog_name, _, config = name[len("tfds:"):].partition("/")
    if not catalog_name:
      raise UnknownDatasetError(f"dataset {name!r}: 'tfds:' needs a dataset name, e.g. 'tfds:pg19'")
    return DatasetSpec(kind="tfds", name=catalog_name, config=config)
  if name.startswith("random:"):
    count = name[len("random:"):] or "64"
    if not count.isdigit() or int(count) < 1:
      raise UnknownDatasetError(f"dataset {name!r}: 'random:' takes a positive document count")
    return DatasetSpec(kind="random", num_docs=int(count))
  raise UnknownDatasetError(f"unknown dataset {name!r}; expected {known_dataset_names()}")


# ---------------------------------------------------------------------------
# Embedded corpora.


def embedded_version_dir(name: str, data_dir: str) -> str:
  from rope_lab.data.builders import EMBEDDED_BUILDERS  # pylint: disable=g-import-not-at-top
  return os.path.join(data_dir, name, str(EMBEDDED_BUILDERS[name].VERSION))


def is_embedded_prepared(name: str, data_dir: str) -> bool:
  return os.path.isfile(os.path.join(embedded_version_dir(name, data_dir), "dataset_info.json"))


def prepare_embedded(name: str, data_dir: str) -> str:
  """Builds the TFDS dataset ``name`` under ``data_dir`` unless it is there already.

  The dataset is written into a fresh temporary directory inside ``data_dir``
  and moved into place with one rename, so an interrupted or failed run leaves
  what was prepared before untouched and never a half-written dataset.

  Returns:
    The prepared version directory.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from rope_lab.data.builders import EMBEDDED_BUILDERS  # pylint: disable=g-import-not-at-top
  final_dir = embedded_version_dir(name, data_dir)
  if is_embedded_prepared(name, data_dir):
    return final_dir
  builder_cls = EMBEDDED_BUILDERS[name]
  tfds.disable_progress_bar()  # a few seconds of work; the callers report what was prepared
  tmp_root = tempfile.mkdtemp(dir=data_dir, prefix=f".incomplete-{name}-")
  try:
    builder = builder_cls(data_dir=tmp_root, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    built_dir = os.path.join(tmp_root, name, str(builder_cls.VERSION))
    integrity.write_manifest(built_dir, [f for f in os.listdir(built_dir) if "array_record" in f])
    os.makedirs(os.path.dirname(final_dir), exist_ok=True)
    try:
      os.rename(built_dir, final_dir)
    except OSError:
      # Another process finished first; its copy is as good as ours.
      if not is_embedded_prepared(name, data_dir):
        raise
  finally:
    shutil.rmtree(tmp_root, ignore_errors=True)
  return final_dir


def embedded_remedy(name: str, data_dir: str) -> str:
  return (f"re-prepare the dataset: delete {embedded_version_dir(name, data_dir)} and run "
          f"python -m experiments.prepare_data --dataset={name} --data_dir={data_dir}")


def check_embedded_records(name: str, data_dir: str) -> None:
  """The prepared records of ``name`` against the sizes and checksums of their preparation."""
  integrity.check_manifest(embedded_version_dir(name, data_dir),
                           f"prepared records of dataset {name!r}", embedded_remedy(name, data_dir))


def _records(source, where: str, remedy: str):
  """The records of a TFDS data source; a record that cannot be read names ``where``."""
  for i in range(len(source)):
    try:
      yield source[i]
    except Exception as e:  # pylint: disable=broad-except
      # array_record reports a truncated or corrupt file as anything from None records
      # (AttributeError downstream) to status errors; the file is what the user can act on.
      raise DocumentError(f"record {i} of {where} cannot be read ({type(e).__name__}: {e}); "
                          f"{remedy}") from None


def _embedded_source(name: str, data_dir: str, split: str, auto_prepare: bool):
  from rope_lab.data.builders import EMBEDDED_BUILDERS  # pylint: disable=g-import-not-at-top
  if not is_embedded_prepared(name, data_dir):
    if not auto_prepare:
      raise DatasetNotPreparedError(
          f"dataset {name!r} is not prepared under {data_dir!r}; run "
          f"python -m experiments.prepare_data --dataset={name} --data_dir={data_dir}")
    prepare_embedded(name, data_dir)
  check_embedded_records(name, data_dir)
  builder = EMBEDDED_BUILDERS[name](data_dir=data_dir, file_format="array_record")
  _check_split(builder.info.splits.keys(), split, name)
  return builder.as_data_source(split=split)


# ---------------------------------------------------------------------------
# TFDS catalog datasets.


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))


def catalog_dataset_dir(spec: DatasetSpec, data_dir: str) -> str:
  """The newest prepared version directory of a ``tfds:`` dataset.

  Looks at the file system only, so an unprepared dataset fails at once
  instead of after TFDS's network retries.
  """
  parent = os.path.join(data_dir, spec.name, spec.config) if spec.config else os.path.join(
      data_dir, spec.name)
  versions = []
  if os.path.isdir(parent):
    versions = [v for v in os.listdir(parent)
                if os.path.isfile(os.path.join(parent, v, "dataset_info.json"))]
  if not versions:
    full = spec.name + (f"/{spec.config}" if spec.config else "")
    raise DatasetNotPreparedError(
        f"TFDS dataset {full!r} is not prepared under {data_dir!r} (no "
        f"{parent}/<version>/dataset_info.json), and it cannot be downloaded here. On a "
        f"machine with internet and TensorFlow (pip install tensorflow tensorflow-datasets) "
        f"run: tfds build {full} --data_dir=DIR --file_format=array_record ; then copy "
        f"DIR/{spec.name} to {os.path.join(data_dir, spec.name)}")
  return os.path.join(parent, max(versions, key=_version_key))


def _catalog_source(spec: DatasetSpec, data_dir: str, split: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  version_dir = catalog_dataset_dir(spec, data_dir)
  builder = tfds.builder_from_directory(version_dir)
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if "array_record" not in file_format:
    raise DatasetNotPreparedError(
        f"{version_dir!r} holds {file_format} files, which have no random access; convert it "
        f"with: tfds convert_format --root_data_dir={data_dir} --out_file_format=array_record")
  _check_split(builder.info.splits.keys(), split, f"tfds:{spec.name}")
  return builder.as_data_source(split=split), builder.info.features


def text_feature_name(features, requested: str | None, dataset: str) -> str:
  """The feature holding document text: ``requested`` or the best-named text feature."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  text_names = [k for k, v in features.items() if isinstance(v, tfds.features.Text)]
  if requested is not None:
    if requested not in text_names:
      raise DocumentError(f"DataConfig.text_feature={requested!r} is not a text feature of "
                          f"{dataset!r}; its text features are {text_names}")
    return requested
  for name in _TEXT_FEATURE_PREFERENCE:
    if name in text_names:
      return name
  if len(text_names) == 1:
    return text_names[0]
  raise DocumentError(f"dataset {dataset!r} has text features {text_names}; choose one with "
                      "DataConfig.text_feature")


def _as_text(value) -> str:
  # TFDS data sources return text features as bytes.
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_split(available, split: str, dataset: str) -> None:
  available = sorted(available)
  if split not in available:
    raise DocumentError(f"dataset {dataset!r} has no split {split!r}; it has {available}")


# ---------------------------------------------------------------------------
# Local files.


def _glob_base(pattern: str) -> str:
  """The directory part of ``pattern`` before its first wildcard."""
  parts = []
  for part in os.path.normpath(pattern).split(os.sep):
    if glob.has_magic(part):
      break
    parts.append(part)
  base = os.sep.join(parts) or "."
  return base if os.path.isdir(base) else os.path.dirname(base) or "."


def list_files(pattern: str) -> list[str]:
  """Sorted regular files matching ``pattern`` (``**`` recurses)."""
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(p))
  if not paths:
    raise DatasetNotPreparedError(f"dataset 'files:{pattern}': no file matches {pattern!r}")
  return paths


def read_text_file(path: str) -> str:
  """A file's text; empty or non-UTF-8 files raise DocumentError naming the file."""
  with open(path, "rb") as f:
    raw = f.read()
  if not raw.strip():
    raise DocumentError(f"file {path!r} is empty; remove it or narrow the glob")
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DocumentError(
        f"file {path!r} is not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
        f"convert it, e.g. iconv -f latin1 -t utf-8") from e


def files_fingerprint(pattern: str) -> str:
  """Changes when a matching file is added, removed or modified."""
  digest = hashlib.sha256(pattern.encode())
  for path in list_files(pattern):
    stat = os.stat(path)
    digest.update(f"\0{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
  return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Documents of any dataset.


def iter_documents(spec: DatasetSpec, split: str, data_dir: str, *,
                   text_feature: str | None = None,
                   auto_prepare: bool = True) -> Iterator[tuple[str, str]]:
  """Yields ``(doc_id, text)`` for every document of ``split``, in a fixed order."""
  if spec.kind == "embedded":
    source = _embedded_source(spec.name, data_dir, split, auto_prepare)
    where = f"split {split!r} of dataset {spec.name!r} in {embedded_version_dir(spec.name, data_dir)}"
    for record in _records(source, where, embedded_remedy(spec.name, data_dir)):
      if record is None or record.get("id") is None or record.get("text") is None:
        raise DocumentError(f"a record of {where} is empty (a truncated or corrupt file); "
                            f"{embedded_remedy(spec.name, data_dir)}")
      yield record["id"].decode("utf-8"), record["text"].decode("utf-8")
  elif spec.kind == "tfds":
    source, features = _catalog_source(spec, data_dir, split)
    feature = text_feature_name(features, text_feature, f"tfds:{spec.name}")
    id_feature = next((k for k in _ID_FEATURE_PREFERENCE if k in features), None)
    where = f"split {split!r} of tfds:{spec.name} in {catalog_dataset_dir(spec, data_dir)}"
    remedy = "copy the dataset's array_record files again from where it was prepared"
    for i, record in enumerate(_records(source, where, remedy)):
      if record is None:
        raise DocumentError(f"record {i} of {where} is empty (a truncated or corrupt file); {remedy}")
      doc_id = record[id_feature] if id_feature else i
      yield _as_text(doc_id), _as_text(record[feature])
  elif spec.kind == "files":
    base = _glob_base(spec.name)
    for path in list_files(spec.name):
      doc_id = os.path.relpath(path, base).replace(os.sep, "/")
      if split_of(doc_id, FILES_SPLIT_SALT) == split:
        yield doc_id, read_text_file(path)
  elif spec.kind == "mixture":
    for part in spec.parts:
      prefix = part.name if part.kind != "tfds" else f"tfds:{part.name}"
      for doc_id, text in iter_documents(part, split, data_dir, text_feature=text_feature,
                                         auto_prepare=auto_prepare):
        yield f"{prefix}/{doc_id}", text
  else:
    raise DocumentError(f"dataset kind {spec.kind!r} has no text documents")


def source_key(spec: DatasetSpec, data_dir: str) -> str:
  """A directory-safe name that changes whenever the documents may change."""
  if spec.kind == "embedded":
    return f"{spec.name}-{os.path.basename(embedded_version_dir(spec.name, data_dir))}"
  if spec.kind == "tfds":
    version_dir = catalog_dataset_dir(spec, data_dir)
    parts = ["tfds", spec.name, spec.config, os.path.basename(version_dir)]
    return "-".join(p.replace(os.sep, "_") for p in parts if p)
  if spec.kind == "files":
    return f"files-{files_fingerprint(spec.name)}"
  if spec.kind == "mixture":
    return "mix-" + hashlib.sha256(
        "+".join(source_key(p, data_dir) for p in spec.parts).encode()).hexdigest()[:16]
  return f"random-{spec.num_docs}"
