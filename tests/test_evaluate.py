"""Evaluation: sliding-window NLL against a direct computation, no recompiles across encodings,
one-pass retrieval scoring against the data module's decoders, attention statistics, plans."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab import evaluate as ev
from rope_lab import pe
from rope_lab.data import (ByteTokenizer, LongDocument, RetrievalExample, answer_log_likelihood,
                           greedy_exact_match, passkey_example)
from rope_lab.model.skeleton import ModelConfig, Transformer, init_params
from rope_lab.model.forward import blockwise_token_losses, token_losses

CFG = ModelConfig(vocab_size=258, d_model=32, n_layers=1, n_heads=2, mlp_dim=64, attention="dot_product",
                  init_std=0.2)  # a large init makes the random model's predictions position-sensitive
TRAIN_LENGTH = 16




@pytest.fixture(scope="module")
def params():
  hooks = pe.make("rope").hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=16)
  return init_params(CFG, hooks, jax.random.key(0))


def _reference_nll(params, encoding, windows):
  """Sum of masked token losses, window by window, on the full-matrix reference attention."""
  cfg = dataclasses.replace(CFG, attention="reference")
  forward = jax.jit(lambda p, tokens, hooks: Transformer(cfg).apply({"params": p}, tokens, hooks=hooks))
  total = 0.0
  for w in windows:
    hooks = ev.encoding_hooks(cfg, encoding, len(w.inputs))
    logits = forward(params, jnp.asarray(w.inputs[None]), hooks)
    total += float((token_losses(logits, jnp.asarray(w.targets[None]))[0] * w.loss_mask).sum())
  return total


# Fused attention below 512 tokens, chunked from 512 on: in blocks of 128, and of the
# evaluation's own choice (eval_chunk_size: 256 for a 512-token window).
@pytest.mark.parametrize("length,chunk", [(24, 128), (512, 128), (512, None)])
def test_sliding_window_perplexity_matches_a_direct_computation(params, length, chunk):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, size=int(length * 2.3)).astype(np.int32)
  doc = LongDocument("doc", tokens, num_bytes=len(tokens))
  tok = ByteTokenizer()
  encoding = pe.make("dynamic_yarn", original_max_position_embeddings=TRAIN_LENGTH)
  result = ev.perplexity_at_length(CFG, params, encoding, [doc], length, stride=length // 2, tokenizer=tok,
                                   chunk_size=chunk)
  windows = ev.document_windows([doc], length, length // 2, tok.pad_id)
  assert result.tokens == len(tokens) - 1 == result.bytes  # each target scored once
  np.testing.assert_allclose(result.loss * result.tokens, _reference_nll(params, encoding, windows), rtol=2e-5)
  assert result.bits_per_byte == pytest.approx(result.loss / np.log(2))


def test_evaluation_blocks_keep_every_heads_logits_within_16_mib_and_cut_a_window_in_8():
  # The measured best blocks (benchmarks/README.md): 1024 for the tiny model's 4 heads, 512
  # for SmolLM2-135M's 9 at long windows; at least 8 blocks a window; never below 256 tokens.
  chunk_of = lambda heads, length: ev.eval_model_config(
      dataclasses.replace(CFG, n_heads=heads, n_kv_heads=heads, d_model=heads * 16), length).chunk_size
  assert [chunk_of(h, 32768) for h in (2, 4, 9, 16, 64, 128)] == [1024, 1024, 512, 512, 256, 256]
  assert [chunk_of(4, n) for n in (512, 1024, 2048, 4096, 8192)] == [256, 256, 256, 512, 1024]
  assert ev.eval_model_config(CFG, 600, chunk_size=128).chunk_size == 128


def test_window_batches_padded_with_masked_rows_give_the_same_total(params):
  rng = np.random.default_rng(1)
  doc = LongDocument("doc", rng.integers(0, 256, size=200).astype(np.int32), 200)
  windows = ev.document_windows([doc], 32, 16, 256)
  hooks = ev.encoding_hooks(CFG, pe.make("rope"), 32)
  one = ev.window_nll(CFG, params, windows, hooks, batch_size=1)
  five = ev.window_nll(CFG, params, windows, hooks, batch_size=5)  # 12 windows: last batch padded
  assert one.tokens == five.tokens == 199
  assert one.total == pytest.approx(five.total, rel=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_blockwise_loss_from_hidden_states_equals_torch_cross_entropy_of_the_logits(tied):
  import torch  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(CFG, tied_embeddings=tied)
  hooks = pe.make("rope").hooks(head_dim=cfg.head_dim, n_heads=cfg.n_heads, d_model=cfg.d_model, seq_len=13)
  p = init_params(cfg, hooks, jax.random.key(1))
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 258, size=(2, 14)), jnp.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  model = Transformer(cfg)
  logits, hidden = jax.jit(lambda p, h: (model.apply({"params": p}, inputs, hooks=h),
                                         model.apply({"params": p}, inputs, hooks=h, return_hidden=True)))(p, hooks)
  assert hidden.shape == (2, 13, cfg.d_model)
  expected = torch.nn.functional.cross_entropy(torch.from_numpy(np.asarray(logits)).reshape(-1, 258),
                                               torch.from_numpy(np.asarray(targets)).long().reshape(-1),
                                               reduction="none").reshape(2, 13).numpy()
  for block in (1, 5, 13, 64):  # 5 leaves a padded last block
    losses = blockwise_token_losses(cfg, p, hidden, targets, block_tokens=block)
    np.testing.assert_allclose(np.asarray(losses), expected, rtol=1e-5, atol=1e-6)


def test_switching_frequency_and_scale_encodings_does_not_recompile(params):
  rng = np.random.default_rng(2)
  doc = LongDocument("doc", rng.integers(0, 256, size=100).astype(np.int32), 100)
  windows = ev.document_windows([doc], 32, 32, 256)
  orig = {"original_max_position_embeddings": TRAIN_LENGTH}
  encodings = [pe.make("rope"), pe.make("pi", factor=2.0), pe.make("ntk", alpha=2.0),
               pe.make("yarn", factor=2.0, **orig), pe.make("dynamic_ntk", factor=1.0, **orig),
               pe.make("dynamic_yarn", **orig), pe.make("llama3", base=10000.0, factor=2.0, **orig),
               pe.make("power"), pe.make("truncated", cutoff_wavelength=16.0)]
  before = ev.trace_count()
  losses = [ev.window_nll(CFG, params, windows, ev.encoding_hooks(CFG, enc, 32)).loss for enc in encodings]
  assert ev.trace_count() - before <= 1  # at most the first call traces (another test may have)
  assert len(set(np.round(losses, 6))) >= 6  # the encodings really differ
  # A new window length is a new shape: exactly one more trace.
  ev.window_nll(CFG, params, ev.document_windows([doc], 48, 48, 256), ev.encoding_hooks(CFG, encodings[1], 48))
  ev.window_nll(CFG, params, ev.document_windows([doc], 48, 48, 256), ev.encoding_hooks(CFG, encodings[2], 48))
  assert ev.trace_count() - before <= 2


def _with_answer(example: RetrievalExample, answer: np.ndarray) -> RetrievalExample:
  tokens = np.concatenate([example.prompt, answer]).astype(np.int32)
  return dataclasses.replace(example, tokens=tokens)


def test_one_pass_retrieval_scoring_equals_greedy_decoding(params):
  tok = ByteTokenizer()
  encoding = pe.make("yarn", factor=4.0, original_max_position_embeddings=TRAIN_LENGTH)
  logits_fn = ev.logits_fn(CFG, params, encoding)
  examples = [passkey_example(tok, 180, depth, seed) for seed, depth in enumerate((0.0, 0.5, 1.0, 0.3))]
  # Make two answers the model's own greedy continuation, so exact matches exist.
  for i in (0, 2):
    greedy = examples[i].tokens.copy()
    start = examples[i].answer_start
    for t in range(start, len(greedy)):
      greedy[t] = int(np.argmax(np.asarray(logits_fn(greedy[None]))[0, t - 1]))
    examples[i] = _with_answer(examples[i], greedy[start:])
  # And one answer right in its first token only.
  partial = examples[1].tokens.copy()
  partial[examples[1].answer_start] = int(np.argmax(np.asarray(logits_fn(partial[None]))[0, examples[1].answer_start - 1]))
  examples[1] = _with_answer(examples[1], partial[examples[1].answer_start:])

  scores = ev.score_examples(CFG, params, encoding, examples)
  expected = greedy_exact_match(logits_fn, examples, pad_id=tok.pad_id)
  assert [s.exact for s in scores] == list(expected)
  assert list(expected[[0, 2]]) == [True, True] and not expected[1]
  np.testing.assert_allclose([s.answer_logprob for s in scores], answer_log_likelihood(logits_fn, examples),
                             rtol=1e-4)
  assert scores[0].token_accuracy == 1.0 and 0 < scores[1].token_accuracy < 1
  summary = ev.summarize_scores(scores)
  assert summary["accuracy"] == 0.5 and summary["examples"] == 4


def test_attention_maps_are_causal_distributions_and_mass_by_distance_is_exact(params):
  rows = np.random.default_rng(3).integers(0, 256, size=(2, 24))
  maps = ev.mean_attention_maps(CFG, params, pe.make("rope"), rows)
  assert maps.shape == (CFG.n_layers, 24, 24)
  np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
  assert np.abs(np.triu(maps, 1)).max() == 0.0

  identity = np.eye(8)[None]
  np.testing.assert_allclose(ev.mass_by_distance(identity)[0], np.eye(8)[0])
  uniform = np.tril(np.ones((8, 8))) / np.arange(1, 9)[:, None]
  mass = ev.mass_by_distance(uniform[None])[0]
  # Query i spreads 1/(i+1) over distances 0..i; distance d is reached by queries d..7.
  np.testing.assert_allclose(mass, [sum(1 / (i + 1) for i in range(d, 8)) / 8 for d in range(8)])
  edges = ev.distance_bins(8)
  assert list(edges) == [0, 1, 2, 4, 8]
  np.testing.assert_allclose(ev.binned_mass(mass, edges).sum(), 1.0)
  np.testing.assert_allclose(ev.binned_mass(mass, edges)[2], mass[2] + mass[3])


def test_mean_qk_matches_the_projections_computed_by_hand(params):
  cfg = dataclasses.replace(CFG, n_layers=1)
  p1 = init_params(cfg, pe.make("rope").hooks(head_dim=16, n_heads=2, d_model=32, seq_len=8),
                   jax.random.key(1))
  rows = np.random.default_rng(4).integers(0, 256, size=(3, 8))
  q, k = ev.mean_qk(cfg, p1, pe.make("rope"), rows)
  x = np.asarray(p1["embed"]["embedding"])[rows]
  normed = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * np.asarray(p1["layers_0"]["attn_norm"]["scale"])
  expect_q = np.einsum("bld,dhk->hk", normed, np.asarray(p1["layers_0"]["attn"]["q"]["kernel"])) / rows.size
  expect_k = np.einsum("bld,dhk->hk", normed, np.asarray(p1["layers_0"]["attn"]["k"]["kernel"])) / rows.size
  np.testing.assert_allclose(q[0], expect_q, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(k[0], expect_k, rtol=1e-4, atol=1e-6)
  pairs = ev.probe_pairs("trained", 16, q_mean=q, k_mean=k)
  assert len(pairs) == 2  # one (q, k) per layer and head


def test_analytic_maps_follow_the_encoding():
  pairs = ev.probe_pairs("ones", 16)
  positions = np.arange(32)
  rope = ev.probe_score_grid(pe.make("rope"), pairs, positions, seq_len=32)
  assert np.isnan(rope[0, 1]) and not np.isnan(rope[1, 0])  # the causal future is blank
  np.testing.assert_allclose(rope[10, 3], rope[20, 13], rtol=1e-5)  # RoPE depends on i - j only
  pi = ev.probe_score_by_distance(pe.make("pi", factor=4.0), pairs, 40, seq_len=41)
  plain = ev.probe_score_by_distance(pe.make("rope"), pairs, 10, seq_len=11)
  np.testing.assert_allclose(pi[::4], plain, rtol=1e-4, atol=1e-4)  # PI at d == RoPE at d / s


@pytest.mark.parametrize("name,params", [
    ("rope", {}), ("yarn", {"factor": 4.0, "original_max_position_embeddings": 16}), ("xpos", {}),
    ("alibi", {}), ("rerope", {"window": 8}), ("sinusoidal", {}), ("logn", {"original_max_position_embeddings": 16}),
])
def test_analytic_pairs_scored_together_equal_each_pair_scored_alone(name, params):
  """The trained probe's (q, k) pairs go through the hooks at once, on the head axis; each
  pair's grid must be what scoring it alone gives (ALiBi's bias, remap rules and absolute
  tables included)."""
  from rope_lab.pe import similarity  # pylint: disable=g-import-not-at-top
  rs = np.random.default_rng(0)
  q_PxD, k_PxD = rs.normal(size=(3, 16)), rs.normal(size=(3, 16))
  encoding = pe.make(name, **params)
  positions = np.arange(40)
  together = similarity.score_grid(encoding, q_PxD, k_PxD, positions, positions, seq_len=40)
  assert together.shape == (3, 40, 40)
  for p in range(3):
    alone = similarity.score_grid(encoding, q_PxD[p], k_PxD[p], positions, positions, seq_len=40)
    np.testing.assert_allclose(together[p], alone, rtol=1e-6, atol=1e-6)
  mean = ev.probe_score_by_distance(encoding, list(zip(q_PxD, k_PxD)), 30, seq_len=40)
  want = np.mean([similarity.score_by_distance(encoding, q, k, 30, seq_len=40) for q, k in zip(q_PxD, k_PxD)], 0)
  np.testing.assert_allclose(mean, want, rtol=1e-6, atol=1e-6)


def test_plans_resolve_matched_parameters_and_parse_json():
  plan = ev.plan_from_json('{"name": "pi", "factor": "matched", "base": 10000}')
  assert plan.label == "pi s=L/L0" and plan.is_matched
  assert plan.resolve(64, 16)["factor"] == 4.0 and plan.resolve(8, 16)["factor"] == 1.0
  ape = {p.label: p for p in ev.ape_plans(16, {"name": "learned", "max_length": 16, "extension": "none"})}
  interp = ape["APE interpolate"].encoding(64, 16)
  assert interp.extension_factor == pytest.approx(63 / 15)  # the last position maps onto row 15
  interp.hooks(head_dim=8, n_heads=2, d_model=16, seq_len=64)  # fits the 16-row table
  # A sinusoidal model keeps its own table parameters under every extension.
  sin = {p.label: p for p in ev.ape_plans(16, {"name": "sinusoidal", "max_timescale": 100.0})}
  grouped = sin["APE grouped"].encoding(64, 16)
  assert (grouped.name, grouped.max_timescale, grouped.extension) == ("sinusoidal", 100.0, "grouped")
  labels = [p.label for p in ev.rope_family_plans(128, base=10000.0, scale=4.0)]
  assert labels[:2] == ["RoPE", "PI s=4"] and "Dynamic YaRN" in labels and len(labels) == len(set(labels))
  with pytest.raises(ValueError, match="factor"):
    ev.plan_from_json('{"name": "pi", "factor": 0.5}')
