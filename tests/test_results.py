"""results.jsonl: rows, appending, reading back (torn tails), hashing, selecting, summarising."""

import dataclasses
import json
import math

import numpy as np
import pytest

from rope_lab import results as results_lib


def _row(key="k", seed=0, value=1.0, **fields):
  return results_lib.make_row("perplexity", key, metrics={"loss": value}, seed=seed, config_hash="abc",
                              commit="c0ffee", **fields)


def test_rows_round_trip_through_the_file_and_carry_their_provenance(tmp_path):
  path = str(tmp_path / "sub" / "results.jsonl")
  results = results_lib.ResultsFile(path)
  assert results.read() == []
  assert results.append([_row("a", length=128, encoding={"name": "pi", "factor": 4.0}),
                         _row("b", seed=1, value=np.float32(2.5))]) == 2
  results.append([_row("c", seed=2)])
  rows = results.read()
  assert [r["key"] for r in rows] == ["a", "b", "c"]
  assert rows[0]["encoding"] == {"name": "pi", "factor": 4.0} and rows[0]["length"] == 128
  assert rows[1]["metrics"]["loss"] == 2.5 and isinstance(rows[1]["metrics"]["loss"], float)
  for row in rows:
    assert {"kind", "key", "seed", "metrics", "config_hash", "commit", "time", "schema"} <= set(row)
  assert results.done_keys() == {"a", "b", "c"} and results.done_keys("other") == set()
  with open(path) as f:
    assert len(f.read().splitlines()) == 3  # one line per row


def test_a_torn_last_line_is_dropped_but_a_broken_middle_line_is_an_error(tmp_path):
  path = str(tmp_path / "results.jsonl")
  results = results_lib.ResultsFile(path)
  results.append([_row("a"), _row("b")])
  with open(path, "a") as f:
    f.write('{"kind": "perplexity", "key": "c", "metr')  # a writer killed mid-line
  assert [r["key"] for r in results.read()] == ["a", "b"]
  with open(path, "a") as f:
    f.write("\n" + json.dumps(_row("d")) + "\n")
  with pytest.raises(ValueError, match=r"results.jsonl:3"):
    results.read()


def test_rows_refuse_missing_and_reserved_fields(tmp_path):
  with pytest.raises(ValueError, match="kind and a key"):
    results_lib.make_row("", "k", metrics={}, seed=0, config_hash="h", commit="c")
  with pytest.raises(ValueError, match="reserved"):
    results_lib.make_row("perplexity", "k", metrics={}, seed=0, config_hash="h", commit="c", time=3)
  with pytest.raises(ValueError, match="lacks"):
    results_lib.ResultsFile(str(tmp_path / "r.jsonl")).append([{"kind": "x", "key": "k"}])


@dataclasses.dataclass(frozen=True)
class _Cfg:
  steps: int
  scales: tuple


def test_config_hash_is_stable_order_free_and_sensitive():
  a = results_lib.config_hash({"x": 1, "y": [1, 2], "cfg": _Cfg(3, (1, 2))})
  assert a == results_lib.config_hash({"cfg": _Cfg(3, (1, 2)), "y": (1, 2), "x": 1})
  assert a != results_lib.config_hash({"x": 1, "y": [1, 2], "cfg": _Cfg(4, (1, 2))})
  assert len(a) == 12 and int(a, 16) >= 0
  assert json.loads(results_lib.canonical_json({"v": math.inf, "n": np.int64(3)})) == {"n": 3, "v": "inf"}


def test_select_and_summarize_over_seeds():
  rows = [_row(seed=s, value=v, plan=p, length=n) for s, v, p, n in
          [(0, 1.0, "pi", 128), (1, 2.0, "pi", 128), (2, 4.0, "pi", 128), (0, 9.0, "yarn", 128),
           (0, 5.0, "pi", 256), (1, 3.0, "pi", 128)]]  # seed 1 measured twice: the last counts
  pi = results_lib.select(rows, plan="pi", length=128)
  assert len(pi) == 4
  summary = results_lib.summarize(pi, "loss")
  assert (summary.n, summary.seeds) == (3, (0, 1, 2))
  assert summary.mean == pytest.approx(8 / 3) and summary.std == pytest.approx(np.std([1, 3, 4], ddof=1))
  assert (summary.low, summary.high) == (1.0, 4.0)
  assert summary.format(2) == f"2.67 ± {np.std([1, 3, 4], ddof=1):.2f}"
  assert results_lib.summarize(results_lib.select(rows, plan=("yarn",)), "loss").format(1) == "9.0"
  assert len(results_lib.select(rows, length=[128, 256])) == 6
  assert results_lib.summarize(rows, "missing") is None


def test_git_commit_names_a_commit():
  commit = results_lib.git_commit()
  assert commit == "unknown" or len(commit.split("+")[0]) == 40
