"""Append-only study results: one JSON object per line, one measurement per row.

Every row carries what is needed to trust it on its own: its ``kind`` (perplexity,
passkey, lines, attention, train, ...), the measured ``metrics``, the ``seed``, the run
and encoding it belongs to, a hash of the configuration that produced it and the git
commit of the code. Rows are only ever appended (a study that is interrupted and started
again keeps what it had measured); readers pick the rows they need with :func:`select`
and summarise seeds with :func:`summarize`.

A row's ``key`` names the measurement independently of its value (run, encoding, length,
...), so a resumed study can skip what ``results.jsonl`` already holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("kind", "key", "metrics", "seed", "config_hash", "commit")


def canonical_json(value: Any) -> str:
  """JSON with sorted keys and no whitespace: equal values give equal text (and hashes)."""
  return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))


def _plain(value: Any) -> Any:
  """Dataclasses, tuples and numpy scalars as JSON values."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
    return value.item()  # numpy / jax scalars
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)  # JSON has no inf/nan; keep them readable rather than failing
  return value


def config_hash(config: Any) -> str:
  """12 hex digits of sha256 over the canonical JSON of a config (dataclass or dict)."""
  return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def git_commit(repo_dir: str | None = None) -> str:
  """HEAD's commit, with '+dirty' when the working tree differs from it (changed or new files,
  ignored ones aside); 'unknown' outside git."""
  repo_dir = repo_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True,
                          text=True, check=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo_dir,
                           capture_output=True, text=True, check=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return head + ("+dirty" if dirty else "")


def make_row(kind: str, key: str, *, metrics: Mapping[str, Any], seed: int | None,
             config_hash: str, commit: str, **fields: Any) -> dict[str, Any]:
  """A result row; ``fields`` are the row's coordinates (run, encoding, length, ...)."""
  if not kind or not key:
    raise ValueError(f"a result row needs a kind and a key, got kind={kind!r} key={key!r}")
  overlap = set(fields) & set(REQUIRED_FIELDS + ("time", "schema"))
  if overlap:
    raise ValueError(f"row fields {sorted(overlap)} are reserved")
  row = {"kind": kind, "key": key, "seed": seed, **fields, "metrics": dict(metrics),
         "config_hash": config_hash, "commit": commit, "time": round(time.time(), 3),
         "schema": SCHEMA_VERSION}
  return _plain(row)


class ResultsFile:
  """``results.jsonl``: append rows, read them back, know which keys are done."""

  def __init__(self, path: str):
    self.path = path
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)

  def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
    """Appends rows (one line each) and flushes them to disk; returns how many."""
    lines = []
    for row in rows:
      missing = [f for f in REQUIRED_FIELDS if f not in row]
      if missing:
        raise ValueError(f"result row lacks {missing}: {dict(row)}")
      lines.append(canonical_json(row) + "\n")
    if lines:
      with open(self.path, "a", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    return len(lines)

  def read(self) -> list[dict[str, Any]]:
    return read_rows(self.path)

  def done_keys(self, config_hash: str | None = None) -> set[str]:
    """Keys already measured (under ``config_hash`` when given)."""
    return {r["key"] for r in self.read() if config_hash is None or r["config_hash"] == config_hash}


def read_rows(path: str) -> list[dict[str, Any]]:
  """All rows of a results file ([] if it does not exist).

  A last line without its newline is what a process killed mid-write leaves; it is
  dropped. Any other malformed line is an error naming the line.
  """
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    text = f.read()
  lines = text.split("\n")
  torn_tail = not text.endswith("\n") and text != ""
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if torn_tail and number == len(lines):
        break
      raise ValueError(f"{path}:{number}: not a JSON row ({e})") from e
  return rows


def select(rows: Sequence[Mapping[str, Any]], **criteria: Any) -> list[Mapping[str, Any]]:
  """Rows whose fields equal every criterion (a tuple/list/set criterion means "one of")."""
  def matches(row):
    for name, wanted in criteria.items():
      value = row.get(name)
      if isinstance(wanted, (tuple, list, set, frozenset)):
        if value not in wanted:
          return False
      elif value != wanted:
        return False
    return True
  return [row for row in rows if matches(row)]


@dataclasses.dataclass(frozen=True)
class Summary:
  """A metric over seeds: mean, sample standard deviation (0 for one seed), min, max, n."""

  mean: float
  std: float
  low: float
  high: float
  n: int
  seeds: tuple

  def format(self, digits: int = 3) -> str:
    if self.n == 1:
      return f"{self.mean:.{digits}f}"
    return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def summarize(rows: Sequence[Mapping[str, Any]], metric: str) -> Summary | None:
  """Mean/std of ``metrics[metric]`` over rows (one per seed); None when there are none.

  Duplicated seeds (a measurement repeated by a resumed study) count once: the last row.
  """
  by_seed = {}
  for row in rows:
    value = row["metrics"].get(metric)
    if value is not None:
      by_seed[row.get("seed")] = float(value)
  if not by_seed:
    return None
  values = list(by_seed.values())
  mean = sum(values) / len(values)
  var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
  return Summary(mean=mean, std=math.sqrt(var), low=min(values), high=max(values), n=len(values),
                 seeds=tuple(sorted(by_seed, key=lambda s: (s is None, s))))
