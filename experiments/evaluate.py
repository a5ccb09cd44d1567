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

Config-file form (what a sweep runs; configs/evaluate.py lists the fields): the checkpoint
is config.checkpoint and --workdir is where this evaluation writes (results.jsonl, log):

  python -m experiments.evaluate --config=configs/evaluate.py:pe=yarn,factor=4 \
      --config.checkpoint=/tmp/rope_lab/tiny --workdir=/tmp/rope_lab/tiny_eval/yarn4
  python -m experiments.sweep --config=configs/evaluate.py:sweep=zero_shot \
      --set=config.checkpoint=/tmp/rope_lab/seeds/seed-{seed} --workdir=/tmp/rope_lab/zero_shot
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/evaluate.py[:arg] (instead of --encoding and the measurement flags).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (config.json + checkpoints); "
                               "with --config, the directory this evaluation writes to.")
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
  from rope_lab.running import cli  # pylint: disable=g-import-not-at-top
  from rope_lab.running import workdir as workdir_lib
  from rope_lab import pe  # pylint: disable=g-import-not-at-top
  from rope_lab.training import checkpoint
  from rope_lab.evaluate import checkpoint_eval, plans, runs  # pylint: disable=g-import-not-at-top
  if _CONFIG.value is not None:
    given = [f"--{f.name}" for f in (_ENCODING, _LENGTHS, _PASSKEY, _LINES) if f.present]
    if given:
      raise app.UsageError(f"--config sets the encoding and the measurements; drop {', '.join(given)}")
    evaluation = checkpoint_eval.evaluation_from_config_dict(_CONFIG.value)
    settings, where = evaluation.settings, "config.checkpoint"
    workdir = cli.absolute_path(evaluation.checkpoint)
    results = cli.absolute_path(_RESULTS.value) or os.path.join(
        cli.absolute_path(_WORKDIR.value), "results.jsonl")
    encoding_plans = [evaluation.plan]
  else:
    settings = checkpoint_eval.EvalSettings(
        lengths=tuple(int(n) for n in _LENGTHS.value or ()), stride_fraction=_STRIDE.value,
        split=_SPLIT.value, max_docs=_MAX_DOCS.value, doc_tokens=_DOC_TOKENS.value,
        passkey_lengths=tuple(int(n) for n in _PASSKEY.value), passkey_depths=tuple(float(d) for d in _DEPTHS.value),
        passkey_samples=_SAMPLES.value, lines_lengths=tuple(int(n) for n in _LINES.value))
    workdir, where = cli.absolute_path(_WORKDIR.value), "--workdir"
    results = cli.absolute_path(_RESULTS.value) or os.path.join(workdir, "eval", "results.jsonl")
    encoding_plans = [plans.plan_from_json(text) for text in _ENCODING.value or ()]
  # A run that cannot be evaluated fails before anything is created under it.
  trained = runs.read_experiment(workdir).encoding
  checkpoint.latest_step_of(workdir, where)
  encoding_plans = encoding_plans or [plans.EncodingPlan.of("trained", pe.to_dict(trained))]
  with workdir_lib.locked(os.path.dirname(results)):
    cli.log_to_file(os.path.dirname(results))
    _evaluate(workdir, results, settings, encoding_plans)


def _evaluate(workdir: str, results: str, settings, encoding_plans) -> None:
  from rope_lab.running import cli  # pylint: disable=g-import-not-at-top
  from rope_lab.evaluate import checkpoint_eval  # pylint: disable=g-import-not-at-top
  rows = checkpoint_eval.evaluate_checkpoint(workdir, encoding_plans, settings, results,
                                             log=cli.say)
  cli.say(f"{len(rows)} new rows in {results}")


if __name__ == "__main__":
  from rope_lab.running import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.run(main)
