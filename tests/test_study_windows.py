"""Per-window losses stored with a perplexity row: each window's own loss, computed window by window."""

import jax
import numpy as np
import pytest

from rope_lab import evaluate as ev
from rope_lab import pe
from rope_lab.data import ByteTokenizer, LongDocument
from rope_lab.study import statistics as st
from tests.test_evaluate import CFG, _reference_nll



@pytest.fixture(scope="module")
def params():
  from rope_lab.model.skeleton import init_params  # pylint: disable=g-import-not-at-top
  hooks = pe.make("rope").hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=16)
  return init_params(CFG, hooks, jax.random.key(0))


def test_per_window_losses_match_each_window_scored_alone_and_pair_across_lengths(params):
  rng = np.random.default_rng(0)
  docs = [LongDocument(f"d{i}", rng.integers(0, 256, size=n).astype(np.int32), n) for i, n in enumerate((70, 53))]
  tok, encoding = ByteTokenizer(), pe.make("rope")
  results = {}
  for length in (16, 32):
    result = ev.perplexity_at_length(CFG, params, encoding, docs, length, stride=length // 2, tokenizer=tok,
                                     batch_size=3)  # a padded last batch
    record = result.per_window
    windows = ev.document_windows(docs, length, length // 2, tok.pad_id)
    assert len(record["nll"]) == len(windows) == result.windows
    for window, nll in list(zip(windows, record["nll"]))[::4]:  # each call recompiles the reference
      assert nll == pytest.approx(_reference_nll(params, encoding, [window]), abs=2e-4)
    assert sum(record["bytes"]) == result.bytes == 69 + 52
    assert sum(record["nll"]) == pytest.approx(result.loss * result.tokens, abs=1e-3)
    # First scored targets: 0, then every half window after the first full one, per document.
    assert record["doc"][:4] == [0, 0, 0, 0] and record["start"][:3] == [0, length, length + length // 2]
    results[length] = {"key": str(length), "windows": record}
  aligned = st.aligned_units(results[32], results[16])
  np.testing.assert_allclose(aligned.bytes[0], aligned.bytes[1])  # the same tokens on both sides
