"""RULER's synthetic tasks on a model under an encoding -> <workdir>/results.jsonl (docs/ruler.md).

  python -m experiments.ruler --model=smollm2 --tasks=niah_single_1,niah_multikey_2,vt \
      --lengths=1024,2048,4096 --samples=8 --workdir=runs/ruler/rope
  python -m experiments.ruler --model=gguf:model.gguf --lengths=8192,16384 --workdir=runs/ruler/yarn \
      --encoding='{"name": "yarn", "factor": 4, "original_max_position_embeddings": 8192}'

--model is a training run's directory, hf:DIR, gguf:FILE or smollm2 (the asset store's GGUF).
"""

from __future__ import annotations

import os

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "Run directory, hf:DIR, gguf:FILE or smollm2.")
_ENCODING = flags.DEFINE_string("encoding", None, "JSON encoding spec (python -m rope_lab.pe); default: the model's.")
_TASKS = flags.DEFINE_list("tasks", None, "RULER tasks (default: the 11 synthetic ones).")
_LENGTHS = flags.DEFINE_list("lengths", None, "Lengths in the model's tokens (prompt + generation budget).")
_SAMPLES = flags.DEFINE_integer("samples", 4, "Haystacks per (task, length).")
_QUERIES = flags.DEFINE_integer("queries", 1, "Questions asked of each haystack, at most (one prefill serves them).")
_SPLIT = flags.DEFINE_bool("split_queries", False, "Ask niah_multiquery's keys one question each.")
_MODES = flags.DEFINE_list("modes", ["greedy"], "greedy (RULER's scoring) and/or teacher_forced.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the haystacks.")
_QA_FILE = flags.DEFINE_string("qa_file", None, "SQuAD / HotpotQA JSON file for qa_1 / qa_2.")
_TRAINED = flags.DEFINE_integer("training_length", None, "Training length (default: the model's, if known).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results.jsonl and log.txt go.")
flags.mark_flags_as_required(["model", "lengths", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rope_lab.evaluate import plans, ruler, ruler_tasks  # pylint: disable=g-import-not-at-top
  from rope_lab.running import cli, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  prefix = next((p for p in ("hf:", "gguf:") if _MODEL.value.startswith(p)), "")
  path = _MODEL.value[len(prefix):]
  model_spec = path if path == "smollm2" else prefix + cli.absolute_path(path)
  workdir = cli.absolute_path(_WORKDIR.value)
  plan = plans.plan_from_json(_ENCODING.value) if _ENCODING.value else None
  options = ruler_tasks.Options(queries=_QUERIES.value, split_queries=_SPLIT.value,
                                qa_file=cli.absolute_path(_QA_FILE.value))
  settings = {f.name: f.value for f in (_MODEL, _ENCODING, _TASKS, _LENGTHS, _SAMPLES, _QUERIES, _SPLIT, _MODES, _SEED)}
  with workdir_lib.locked(workdir):
    cli.log_to_file(workdir)
    results = os.path.join(workdir, "results.jsonl")
    written, summary = ruler.measure_into(
        results, ruler.load_model(model_spec), plan, _TASKS.value or ruler_tasks.SYNTHETIC_TASKS,
        [int(n) for n in _LENGTHS.value], _SAMPLES.value, _SEED.value, settings=settings, modes=_MODES.value,
        options=options, training_length=_TRAINED.value, method=plan.id if plan else "own", log=cli.say)
    for line in summary + [f"{written} new rows in {results}"]:
      cli.say(line)

if __name__ == "__main__":
  from rope_lab.running import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.run(main)
