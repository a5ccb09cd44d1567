"""Draws rotary wavelengths and query-key similarity vs distance for a set of encodings.

  python -m experiments.pe_figure --out=docs/figures/pe_similarity.png \
      --train_length=256 --max_distance=4096

Each --method is a JSON encoding spec; the defaults compare the RoPE family at 8x.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "pe_similarity.png", "PNG file to write.")
flags.DEFINE_integer("head_dim", 64, "Head dimension of the probe vectors.")
flags.DEFINE_integer("train_length", 256, "Original (training) context length L_orig.")
flags.DEFINE_integer("max_distance", 4096, "Largest relative distance drawn.")
flags.DEFINE_enum("vector", "ones", ["ones", "gaussian"], "Probe q = k: all-ones or one Gaussian draw.")
flags.DEFINE_integer("seed", 0, "Seed of the Gaussian probe.")
flags.DEFINE_multi_string("method", None, "JSON spec, e.g. '{\"name\": \"pi\", \"factor\": 8}'. Repeatable.")


def default_methods(train_length: int, factor: float) -> list[dict]:
  orig = {"original_max_position_embeddings": train_length}
  return [
      {"name": "rope"},
      {"name": "pi", "factor": factor},
      {"name": "ntk", "alpha": factor},
      {"name": "dynamic_ntk", "factor": factor, **orig},
      {"name": "yarn", "factor": factor, **orig},
      {"name": "dynamic_yarn", **orig},
      {"name": "llama3", "base": 10000.0, "factor": factor, **orig},
      {"name": "power", "power": 0.5},
      {"name": "truncated", "cutoff_wavelength": float(train_length)},
      {"name": "xpos"},
      {"name": "alibi"},
  ]


def main(argv):
  del argv
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from rope_lab import pe


  from rope_lab.running import cli

  from rope_lab.pe import similarity
  factor = FLAGS.max_distance / FLAGS.train_length
  specs = [_spec(m) for m in FLAGS.method] if FLAGS.method else default_methods(FLAGS.train_length, factor)
  encodings = [pe.from_dict(spec) for spec in specs]  # all validated before any drawing
  d = FLAGS.head_dim
  if FLAGS.vector == "ones":
    q = np.ones(d, np.float32)
  else:
    q = np.random.default_rng(FLAGS.seed).normal(size=d).astype(np.float32)
  labels = [spec["name"] + " " + ", ".join(f"{k}={v}" for k, v in spec.items()
                                         if k not in ("name", "original_max_position_embeddings"))
            for spec in specs]

  rows = []
  for enc in encodings:
    scores = similarity.score_by_distance(enc, q, q, FLAGS.max_distance, seq_len=FLAGS.max_distance + 1)
    rows.append(scores / max(np.abs(scores).max(), 1e-12))
  fig, (ax_w, ax_s) = plt.subplots(1, 2, figsize=(16, 0.45 * len(specs) + 3),
                                   gridspec_kw={"width_ratios": [1, 2]})
  for enc, label in zip(encodings, labels):
    w = similarity.wavelengths(enc, d, FLAGS.max_distance + 1)
    if w is not None:
      ax_w.semilogy(np.arange(len(w)), np.where(np.isfinite(w), w, np.nan), label=label)
  ax_w.axhline(FLAGS.train_length, color="k", ls=":", lw=1, label="training length")
  ax_w.set_xlabel("rotary pair i")
  ax_w.set_ylabel("wavelength 2*pi/theta_i (tokens)")
  ax_w.legend(fontsize=7)
  image = ax_s.imshow(np.stack(rows), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                      extent=(0, FLAGS.max_distance, len(rows) - 0.5, -0.5))
  ax_s.axvline(FLAGS.train_length, color="k", ls=":", lw=1)
  ax_s.set_yticks(range(len(rows)), labels, fontsize=7)
  ax_s.set_xlabel("relative distance i - j (tokens)")
  ax_s.set_title(f"q.k score at distance, q = k = {FLAGS.vector}, normalised per row")
  fig.colorbar(image, ax=ax_s, fraction=0.03)
  fig.tight_layout()
  out = cli.absolute_path(FLAGS.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fig.savefig(out, dpi=110)
  cli.say(f"wrote {out}")


def _spec(text: str) -> dict:
  from rope_lab.errors import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    spec = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"--method={text!r} is not valid JSON ({e})") from None
  if not isinstance(spec, dict):
    raise ConfigError(f"--method={text!r} must be a JSON object with a 'name'")
  return spec


if __name__ == "__main__":
  from rope_lab.running import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.run(main)
