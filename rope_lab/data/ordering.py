"""Document order for In-Context Pretraining (Shi et al., 2023).

In-Context Pretraining trains on contexts made of *related* documents instead
of random ones, so the model is rewarded for reading across document
boundaries. The recipe: embed every training document, link each to its
nearest neighbours, then walk that graph visiting every document exactly once,
always stepping to the most similar document not yet used; when all
neighbours of the current document are used, restart from an unvisited
document that few others count as a neighbour (those are the ones that would
otherwise be left stranded). The resulting order is concatenated and cut into
contexts (``packing.ConcatPlan``).

Embeddings here are offline and dependency-free: TF-IDF over lower-cased word
tokens, projected to a few hundred dimensions with a fixed Gaussian random
matrix (cosine similarities survive the projection up to a small error), and
exact nearest neighbours by blocked matrix products in numpy.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+")
# Word ids are folded into this many rows of the projection matrix; collisions
# only add a little noise to the similarities and keep memory bounded.
_PROJECTION_ROWS = 1 << 15


def tfidf_embeddings(texts: Sequence[str], dim: int = 256, seed: int = 0) -> np.ndarray:
  """Unit-norm float32 embeddings ``[len(texts), dim]`` of sublinear TF-IDF vectors."""
  vocabulary: dict[str, int] = {}
  doc_terms, doc_counts = [], []
  for text in texts:
    counts = collections.Counter(_WORD.findall(text.lower()))
    doc_terms.append(np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in counts),
                                 dtype=np.int64, count=len(counts)))
    doc_counts.append(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
  document_frequency = np.zeros(max(len(vocabulary), 1), dtype=np.float64)
  for terms in doc_terms:
    document_frequency[terms] += 1.0
  idf = np.log((1.0 + len(texts)) / (1.0 + document_frequency)) + 1.0
  projection = np.random.default_rng(seed).standard_normal(
      (_PROJECTION_ROWS, dim)).astype(np.float32)
  embeddings = np.zeros((len(texts), dim), dtype=np.float32)
  for i, (terms, counts) in enumerate(zip(doc_terms, doc_counts)):
    if terms.size:
      weights = ((1.0 + np.log(counts)) * idf[terms]).astype(np.float32)
      embeddings[i] = weights @ projection[terms % _PROJECTION_ROWS]
  norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
  return embeddings / np.maximum(norms, 1e-12)


def nearest_neighbours(embeddings: np.ndarray, k: int,
                       block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Exact cosine k-NN (self excluded), most similar first.

  Returns:
    ``(indices, similarities)``, each ``[n, min(k, n - 1)]``.
  """
  n = embeddings.shape[0]
  k = min(k, n - 1)
  if k <= 0:
    return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
  indices = np.empty((n, k), dtype=np.int64)
  similarities = np.empty((n, k), dtype=np.float32)
  for begin in range(0, n, block):
    rows = np.arange(begin, min(begin + block, n))
    scores = embeddings[rows] @ embeddings.T
    scores[np.arange(len(rows)), rows] = -np.inf
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    # Sort by similarity, then by index so ties are deterministic.
    rank = np.lexsort((top, -top_scores), axis=1)
    indices[rows] = np.take_along_axis(top, rank, axis=1)
    similarities[rows] = np.take_along_axis(top_scores, rank, axis=1)
  return indices, similarities


def greedy_neighbour_walk(neighbours: np.ndarray) -> np.ndarray:
  """Visits every document once by following the most similar unvisited neighbour.

  Args:
    neighbours: ``[n, k]`` neighbour indices, most similar first.

  Returns:
    A permutation of ``range(n)``.
  """
  n = neighbours.shape[0]
  in_degree = np.bincount(neighbours.ravel(), minlength=n)
  # Restart points: least-referenced documents first, index breaks ties.
  restarts = np.lexsort((np.arange(n), in_degree))
  visited = np.zeros(n, dtype=bool)
  order = np.empty(n, dtype=np.int64)
  filled, next_restart = 0, 0
  while filled < n:
    while visited[restarts[next_restart]]:
      next_restart += 1
    current = int(restarts[next_restart])
    while current >= 0:
      visited[current] = True
      order[filled] = current
      filled += 1
      current = next((int(j) for j in neighbours[current] if not visited[j]), -1)
  return order


def in_context_order(texts: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
  """The In-Context Pretraining document order of ``texts``."""
  if len(texts) < 2:
    return np.arange(len(texts), dtype=np.int64)
  neighbours, _ = nearest_neighbours(tfidf_embeddings(texts, seed=seed), k)
  return greedy_neighbour_walk(neighbours)


def cached_in_context_order(cache_dir: str | None, texts_fn, num_docs: int, k: int) -> np.ndarray:
  """``in_context_order`` of ``texts_fn()``, cached as ``cache_dir/icp_order_k<k>.npy``.

  The order depends only on the documents and ``k``, so it is computed once
  per token store; a read-only cache directory just means no caching.
  """
  path = os.path.join(cache_dir, f"icp_order_k{k}.npy") if cache_dir else None
  if path and os.path.isfile(path):
    order = np.load(path)
    if order.shape == (num_docs,):
      return order
  order = in_context_order(texts_fn(), k)
  if path:
    try:
      fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".incomplete-", suffix=".npy")
      with os.fdopen(fd, "wb") as f:
        np.save(f, order)
      os.replace(tmp, path)
    except OSError:
      pass
  return order
