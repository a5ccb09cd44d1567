"""Export a trained run (or a loaded checkpoint) as a Hugging Face directory or a GGUF file.

  python -m experiments.export --run=/tmp/rope_lab/smollm2_yarn --out=/tmp/export/smollm2_yarn
  python -m experiments.export --run=/tmp/rope_lab/smollm2_yarn --out=/tmp/export/gguf --format=gguf
  python -m experiments.export --run=gguf:/path/SmolLM2.gguf --out=/tmp/export/yarn4 \
      --encoding='{"name": "yarn", "factor": 4, "original_max_position_embeddings": 8192, "base": 100000}'

--run is a training run's work directory (its newest checkpoint; a LoRA run's merged
weights), hf:<dir> or gguf:<file>; --encoding (a JSON spec as for rope_lab.pe.from_dict)
replaces the encoding it was trained or saved with. See rope_lab/interop/export.py.
"""

from __future__ import annotations

import json

from absl import app, flags

_RUN = flags.DEFINE_string("run", None, "Run directory, hf:<dir> or gguf:<file>.")
_OUT = flags.DEFINE_string("out", None, "Directory to write (model.gguf goes inside it).")
_FORMAT = flags.DEFINE_enum("format", "hf", ["hf", "gguf"], "Hugging Face directory or GGUF file.")
_ENCODING = flags.DEFINE_string("encoding", None, "JSON encoding spec replacing the model's own.")
_TOKENIZER = flags.DEFINE_bool("tokenizer", True, "Write the tokenizer (--notokenizer: the model alone).")
flags.mark_flags_as_required(["run", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rope_lab import pe  # pylint: disable=g-import-not-at-top
  from rope_lab.interop import export  # pylint: disable=g-import-not-at-top
  from rope_lab.running import cli  # pylint: disable=g-import-not-at-top
  try:
    encoding = pe.from_dict(json.loads(_ENCODING.value)) if _ENCODING.value else None
  except json.JSONDecodeError as e:
    raise app.UsageError(f"--encoding is not JSON: {e}") from None
  written = export.export(cli.absolute_path(_RUN.value), cli.absolute_path(_OUT.value), format=_FORMAT.value,
                          encoding=encoding, with_tokenizer=_TOKENIZER.value)
  cli.say(f"wrote {written}")


if __name__ == "__main__":
  from rope_lab.running import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.run(main)
