"""Helpers for the data tests: small text corpora written to temporary directories."""

from __future__ import annotations

import os

import numpy as np

TOPICS = {
    "sea": "ship sail wave harbor anchor tide captain deck storm island",
    "farm": "barn cow wheat plough harvest field tractor hay sheep orchard",
    "space": "rocket orbit planet comet star galaxy astronaut moon launch telescope",
    "kitchen": "oven knife pan recipe flour butter sugar bake soup spoon",
}


def write_files(directory, documents: dict[str, str | bytes]) -> str:
  """Writes ``{relative name: text or bytes}`` under ``directory``; returns its glob."""
  for name, content in documents.items():
    path = os.path.join(str(directory), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(content.encode("utf-8") if isinstance(content, str) else content)
  return os.path.join(str(directory), "**", "*.txt")


def topic_documents(num_per_topic: int = 10, words: int = 120, seed: int = 0) -> dict[str, str]:
  """Documents that each draw their words mostly from one topic's vocabulary."""
  rng = np.random.default_rng(seed)
  common = "the a of and to in is was it for".split()
  documents = {}
  for topic, vocabulary in TOPICS.items():
    topic_words = vocabulary.split()
    for i in range(num_per_topic):
      pool = topic_words * 3 + common
      text = " ".join(rng.choice(pool, size=words)) + "\n"
      documents[f"{topic}/{topic}_{i:02d}.txt"] = text
  return documents
