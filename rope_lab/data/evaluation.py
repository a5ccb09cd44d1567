"""Long-document evaluation inputs: held-out documents and sliding windows.

Context-extension runs train at a short context and measure perplexity on
held-out documents many times longer. ``long_documents`` returns the
validation/test documents of at least a requested length; ``sliding_windows``
cuts one into fixed-length windows in the usual sliding-window-perplexity way
(as in the YaRN and Position Interpolation evaluations): windows start every
``stride`` tokens, and each window scores only the targets no earlier window
scored, so every token is predicted exactly once, with at least
``window - stride`` tokens of context once the first window is past.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from rope_lab.data.config import DataConfig
from rope_lab.data.errors import DataConfigError, DocumentError
from rope_lab.data.store import get_tokenizer, load_token_store
from rope_lab.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class LongDocument:
  """A held-out document.

  Attributes:
    doc_id: the document's id in its dataset.
    tokens: int32 token ids (no end-of-document id), at most ``max_tokens``.
    num_bytes: UTF-8 bytes those tokens stand for (for bits per byte).
  """
  doc_id: str
  tokens: np.ndarray
  num_bytes: int


def long_documents(cfg: DataConfig, split: str = "validation", min_tokens: int = 4096,
                   max_docs: int | None = None, max_tokens: int | None = None,
                   tokenizer: Tokenizer | None = None) -> list[LongDocument]:
  """Documents of ``split`` with at least ``min_tokens`` tokens, in dataset order.

  Args:
    cfg: the data config of the run (dataset, tokenizer, data directory).
    split: 'validation' or 'test' (never the training split, for held-out data).
    min_tokens: documents shorter than this are skipped.
    max_docs: return at most this many documents.
    max_tokens: truncate each returned document to this many tokens.
    tokenizer: reuse this tokenizer instead of building it from ``cfg``.

  Raises:
    DocumentError: naming ``min_tokens`` and the longest document when no
      document of ``split`` is long enough.
  """
  if not isinstance(min_tokens, int) or min_tokens < 2:
    raise DataConfigError(f"long_documents: min_tokens must be an int >= 2, got {min_tokens!r}")
  if max_docs is not None and (not isinstance(max_docs, int) or max_docs < 1):
    raise DataConfigError(f"long_documents: max_docs must be None or >= 1, got {max_docs!r}")
  if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < min_tokens):
    raise DataConfigError(
        f"long_documents: max_tokens must be None or >= min_tokens={min_tokens}, "
        f"got {max_tokens!r}")
  tokenizer = tokenizer or get_tokenizer(cfg)
  store = load_token_store(cfg, split, tokenizer)
  lengths = store.lengths() - 1
  chosen = np.flatnonzero(lengths >= min_tokens)
  if chosen.size == 0:
    longest = int(np.argmax(lengths))
    raise DocumentError(
        f"no document of split {split!r} of {cfg.dataset!r} has min_tokens={min_tokens} "
        f"tokens; the longest, {store.doc_ids[longest]!r}, has {int(lengths[longest])}")
  documents = []
  for index in chosen[:max_docs]:
    tokens = store.document(int(index))[:max_tokens]
    documents.append(LongDocument(doc_id=store.doc_ids[index], tokens=tokens,
                                  num_bytes=tokenizer.count_bytes(tokens)))
  return documents


class Window(NamedTuple):
  """One evaluation window, all arrays of length ``window``.

  ``targets[i]`` is the token after ``inputs[i]``; ``loss_mask[i]`` is 1.0
  where that target is scored by this window (new, and not padding).
  """
  inputs: np.ndarray
  targets: np.ndarray
  loss_mask: np.ndarray


def sliding_windows(tokens, window: int, stride: int, pad_id: int = 0) -> list[Window]:
  """Cuts ``tokens`` into sliding windows that together score each target once.

  Window ``k`` starts at token ``k * stride``. The last window may be shorter
  than ``window``; it is padded with ``pad_id`` and mask 0 so every window
  has the same shape (right padding does not change a causal model's
  predictions for the real tokens).
  """
  tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
  if not isinstance(window, int) or window < 1:
    raise DataConfigError(f"sliding_windows: window must be a positive int, got {window!r}")
  if not isinstance(stride, int) or not 1 <= stride <= window:
    raise DataConfigError(f"sliding_windows: stride must be an int in [1, window={window}], "
                          f"got {stride!r}")
  if tokens.size < 2:
    raise DocumentError(f"sliding_windows: need at least 2 tokens to score one, got {tokens.size}")
  num_targets = tokens.size - 1
  windows, scored, begin = [], 0, 0
  while scored < num_targets:
    end = min(begin + window, num_targets)  # Targets begin..end-1 are tokens[begin+1..end].
    size = end - begin
    inputs = np.full(window, pad_id, dtype=np.int32)
    targets = np.full(window, pad_id, dtype=np.int32)
    loss_mask = np.zeros(window, dtype=np.float32)
    inputs[:size] = tokens[begin:end]
    targets[:size] = tokens[begin + 1:end + 1]
    loss_mask[scored - begin:size] = 1.0
    windows.append(Window(inputs, targets, loss_mask))
    scored, begin = end, begin + stride
  return windows
