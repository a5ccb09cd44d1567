"""In-Context Pretraining ordering: a permutation that puts similar documents together."""

from __future__ import annotations

import numpy as np

from rope_lab.data import ordering
from tests.data.helpers import topic_documents


def _topic_texts():
  documents = topic_documents(num_per_topic=10)
  names = sorted(documents)
  rng = np.random.default_rng(1)
  shuffled = [names[i] for i in rng.permutation(len(names))]  # Hide the topic grouping.
  return [documents[n] for n in shuffled], [n.split("/")[0] for n in shuffled]


def test_order_is_a_permutation():
  texts, _ = _topic_texts()
  order = ordering.in_context_order(texts, k=4)
  assert sorted(order.tolist()) == list(range(len(texts)))


def test_neighbours_are_more_similar_than_random_pairs():
  texts, topics = _topic_texts()
  embeddings = ordering.tfidf_embeddings(texts)
  neighbours, similarities = ordering.nearest_neighbours(embeddings, k=4)
  assert np.all(neighbours != np.arange(len(texts))[:, None])
  assert np.all(np.diff(similarities, axis=1) <= 1e-6)  # Most similar first.
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, len(texts), size=(2, 2000))
  random_pairs = np.sum(embeddings[a] * embeddings[b], axis=1)[a != b]
  assert similarities[:, 0].mean() > random_pairs.mean() + 0.2
  # The nearest neighbour shares the topic.
  assert np.mean([topics[i] == topics[j] for i, j in enumerate(neighbours[:, 0])]) > 0.9


def test_walk_keeps_topics_together():
  texts, topics = _topic_texts()
  embeddings = ordering.tfidf_embeddings(texts)
  order = ordering.in_context_order(texts, k=4)
  walk = np.sum(embeddings[order[:-1]] * embeddings[order[1:]], axis=1).mean()
  shuffled = np.random.default_rng(0).permutation(len(texts))
  baseline = np.sum(embeddings[shuffled[:-1]] * embeddings[shuffled[1:]], axis=1).mean()
  assert walk > baseline + 0.2
  switches = sum(topics[i] != topics[j] for i, j in zip(order[:-1], order[1:]))
  assert switches <= 10  # Four topics: at least 3; a random order has about 30.


def test_greedy_walk_follows_the_most_similar_unvisited_neighbour():
  # A chain 0-1-2-3 plus 4 that nobody points to: the walk starts at 4 (least
  # referenced), then restarts at the least referenced unvisited document.
  neighbours = np.array([[1, 2], [2, 0], [3, 1], [2, 1], [0, 1]])
  order = ordering.greedy_neighbour_walk(neighbours)
  assert order.tolist() == [4, 0, 1, 2, 3]


def test_cached_order_is_reused(tmp_path):
  texts, _ = _topic_texts()
  calls = []
  def texts_fn():
    calls.append(1)
    return texts
  first = ordering.cached_in_context_order(str(tmp_path), texts_fn, len(texts), k=4)
  second = ordering.cached_in_context_order(str(tmp_path), texts_fn, len(texts), k=4)
  assert np.array_equal(first, second) and len(calls) == 1
