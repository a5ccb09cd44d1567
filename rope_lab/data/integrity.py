"""Cheap integrity checks of prepared files: their size and a sampled CRC-32.

Prepared records (array_record files) and token caches are written once and read by every
later run. A file truncated by a full disk or an interrupted copy, or overwritten later,
would otherwise surface as an obscure error deep in a reader, or not at all. At
preparation each file's size and a CRC-32 of evenly spaced blocks are recorded; opening
the files compares them, which costs at most ``SAMPLE_BLOCKS`` small reads per file
whatever its size (files up to ``SAMPLE_BLOCKS * BLOCK_BYTES`` are checksummed whole).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable

from rope_lab.errors import DataError

BLOCK_BYTES = 1 << 16
SAMPLE_BLOCKS = 64
MANIFEST_FILE = "rope_lab_manifest.json"


def fingerprint(path: str) -> dict[str, int]:
  """{"size": bytes, "crc32": CRC-32 of up to SAMPLE_BLOCKS evenly spaced blocks}."""
  size = os.path.getsize(path)
  crc = 0
  with open(path, "rb") as f:
    if size <= SAMPLE_BLOCKS * BLOCK_BYTES:
      crc = zlib.crc32(f.read())
    else:
      stride = (size - BLOCK_BYTES) // (SAMPLE_BLOCKS - 1)
      for i in range(SAMPLE_BLOCKS):
        f.seek(i * stride)
        crc = zlib.crc32(f.read(BLOCK_BYTES), crc)
  return {"size": size, "crc32": crc}


def fingerprints(directory: str, names: Iterable[str]) -> dict[str, dict[str, int]]:
  return {name: fingerprint(os.path.join(directory, name)) for name in sorted(names)}


def check_fingerprints(directory: str, expected: dict[str, dict[str, int]], what: str,
                       remedy: str) -> None:
  """Raises DataError naming the first file of ``directory`` that is missing, of another
  size or another checksum than recorded; ``what`` says what the files are, ``remedy``
  what to do."""
  for name, recorded in sorted(expected.items()):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise DataError(f"{what}: {path} is missing; {remedy}")
    size = os.path.getsize(path)
    if size != recorded["size"]:
      state = "truncated" if size < recorded["size"] else "larger than it was"
      raise DataError(f"{what}: {path} is {state} ({size:,} bytes, {recorded['size']:,} when it "
                      f"was written); {remedy}")
    if fingerprint(path)["crc32"] != recorded["crc32"]:
      raise DataError(f"{what}: {path} changed since it was written (checksum differs); {remedy}")


def write_manifest(directory: str, names: Iterable[str]) -> None:
  """Records the fingerprints of ``names`` in ``directory/MANIFEST_FILE``."""
  with open(os.path.join(directory, MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(fingerprints(directory, names), f, indent=1)


def read_manifest(directory: str) -> dict[str, dict[str, int]] | None:
  path = os.path.join(directory, MANIFEST_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path} is not valid JSON ({e})") from None


def check_manifest(directory: str, what: str, remedy: str) -> None:
  """Checks ``directory`` against its manifest (directories prepared before manifests
  existed have none and are not checked)."""
  manifest = read_manifest(directory)
  if manifest is not None:
    check_fingerprints(directory, manifest, what, remedy)
