"""Evaluate a trained checkpoint under any encodings, zero-shot: perplexity vs length, retrieval.

  python -m experiments.evaluate --workdir=/tmp/rope_lab/tiny \
      --encoding='{"name": "yarn", "factor": 8, "original_max_position_embeddings": 128}' \
      --encoding='{"name": "dynamic_ntk", "factor": 1, "original_max_position_embeddings": 128}' \
      --encoding='{"name": "pi", "factor": "matched", "label": "PI s=L/L0"}' \
      --lengths=128,512,2048,4096 --passkey_lengths=256,1024

Each --encoding is a JSON spec as for ``rope_lab.pe.from_dict`` (``python -m rope_lab.pe``
lists the methods); a parameter set to "matched" becomes L / L_train at each length, and
"label" names the curve. Without --encoding the checkpoint's own encoding is used. Rows
go to --results (default <workdir>/eval/results.jsonl), one per measurement.
"""

from __future__ import annotations

import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (config.json + checkpoints).")
_ENCODING = flags.DEFINE_multi_string("encoding", None, "JSON encoding spec; repeatable.")
_LENGTHS = flags.DEFINE_list("lengths", None, "Perplexity window lengths (tokens).")
_STRIDE = flags.DEFINE_float("stride_fraction", 0.5, "Sliding-window stride as a fraction of the window.")
_SPLIT = flags.DEFINE_enum("split", "test", ["validation", "test"], "Held-out split.")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 2, "Documents scored.")
_DOC_TOKENS = flags.DEFINE_integer("doc_tokens", None,
                                   "Tokens scored per document (default: max(8192, longest window)).")
_PASSKEY = flags.DEFINE_list("passkey_lengths", [], "Passkey context lengths (>= ~170 tokens).")
_DEPTHS = flags.DEFINE_list("passkey_depths", ["0", "0.25", "0.5", "0.75", "1"], "Passkey depths.")
_SAMPLES = flags.DEFINE_integer("passkey_samples", 2, "Passkey examples per (length, depth).")
_LINES = flags.DEFINE_list("lines_lengths", [], "Key-value lines context lengths (>= ~400 tokens).")
_RESULTS = flags.DEFINE_string("results", None, "results.jsonl to append to.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rope_lab import cli, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import checkpoint_eval  # pylint: disable=g-import-not-at-top
  settings = checkpoint_eval.EvalSettings(
      lengths=tuple(int(n) for n in _LENGTHS.value or ()), stride_fraction=_STRIDE.value,
      split=_SPLIT.value, max_docs=_MAX_DOCS.value, doc_tokens=_DOC_TOKENS.value,
      passkey_lengths=tuple(int(n) for n in _PASSKEY.value), passkey_depths=tuple(float(d) for d in _DEPTHS.value),
      passkey_samples=_SAMPLES.value, lines_lengths=tuple(int(n) for n in _LINES.value))
  workdir = cli.absolute_path(_WORKDIR.value)
  results = cli.absolute_path(_RESULTS.value) or os.path.join(workdir, "eval", "results.jsonl")
  # A run that cannot be evaluated fails before anything is created under it.
  from rope_lab import checkpoint  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import runs  # pylint: disable=g-import-not-at-top
  runs.read_experiment(workdir)
  checkpoint.latest_step_of(workdir, "--workdir")
  with workdir_lib.locked(os.path.dirname(results)):
    cli.log_to_file(os.path.dirname(results))
    _evaluate(workdir, results, settings)


def _evaluate(workdir: str, results: str, settings) -> None:
  from rope_lab import cli, pe  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import checkpoint_eval, plans, runs  # pylint: disable=g-import-not-at-top
  if _ENCODING.value:
    encoding_plans = [plans.plan_from_json(text) for text in _ENCODING.value]
  else:
    trained = runs.read_experiment(workdir).encoding
    encoding_plans = [plans.EncodingPlan.of("trained", pe.to_dict(trained))]
  rows = checkpoint_eval.evaluate_checkpoint(workdir, encoding_plans, settings, results,
                                             log=cli.say)
  cli.say(f"{len(rows)} new rows in {results}")


if __name__ == "__main__":
  from rope_lab import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.run(main)
