"""The three attention implementations against the reference and against direct formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rope_lab import pe

from rope_lab.model import attention
from rope_lab.model.skeleton import token_meta

B, L, DH = 2, 19, 8  # L = 19 is not a multiple of the chunk size
CHUNK = 8
ATOL = 1e-5


def packed_rows(length=L):
  """Row 0: segments of 7 and 9 tokens then 3 padding tokens; row 1: one segment."""
  seg0 = np.array([1] * 7 + [2] * 9 + [0] * (length - 16))
  pos0 = np.concatenate([np.arange(7), np.arange(9), np.zeros(length - 16, int)])
  segments = np.stack([seg0, np.ones(length, int)])
  positions = np.stack([pos0, np.arange(length)])
  return jnp.asarray(positions, jnp.int32), jnp.asarray(segments, jnp.int32)


def qkv(seed, n_heads, n_kv, length=L, dtype=jnp.float32):
  rs = np.random.RandomState(seed)
  shapes = [(B, length, n_heads, DH), (B, length, n_kv, DH), (B, length, n_kv, DH)]
  return tuple(jnp.asarray(rs.standard_normal(shape), dtype) for shape in shapes)


def meta_for(hooks, length=L, packed=True):
  if packed:
    positions, segments = packed_rows(length)
  else:
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (B, length))
    segments = None
  return token_meta(hooks, positions, segments, segment_masking=True, rng=None)[0]


# Tests compile dozens of tiny programs; LLVM's optimisations would double the compile
# time and change nothing the assertions look at (XLA's graph passes still run).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(autouse=True)
def full_float32_matmuls():
  """On GPUs float32 dots default to TF32 (~1e-3); the tolerances here assume float32."""
  with jax.default_matmul_precision("highest"):
    yield


@functools.partial(jit, static_argnames=("implementation", "chunk_size", "soft_cap"))
def run(q, k, v, meta, hooks, implementation, chunk_size=CHUNK, soft_cap=None):
  return attention.attend(q, k, v, meta, hooks, implementation=implementation, chunk_size=chunk_size,
                          soft_cap=soft_cap)


SELF_EXTEND = {"group_size": 2, "window": 3, "original_max_position_embeddings": 8}
PCW = {"extension": "pcw", "original_max_position_embeddings": 4, "max_length": 4}

# name, encoding parameters, (n_heads, n_kv_heads). Encodings that act only on the token
# embeddings (sinusoidal, learned with interpolation) give attention NoPE's hooks;
# tests/test_model.py compares the paths on them through the whole model.
CASES = [
    ("nope", {}, (4, 2)),
    ("rope", {}, (4, 2)),
    ("rope", {"layout": "interleaved", "rotary_fraction": 0.5}, (4, 1)),
    ("yarn", {"factor": 4.0, "original_max_position_embeddings": 8}, (4, 2)),
    ("alibi", {}, (6, 3)),  # not a power of two: the interleaved slope rule
    ("xpos", {"scale_base": 16.0}, (4, 2)),
    ("self_extend", SELF_EXTEND, (4, 2)),
    ("learned", PCW, (4, 2)),  # parallel context windows: a mask, positions restart
]


def hooks_for(name, params, n_heads=4, length=L):
  return pe.make(name, **params).hooks(head_dim=DH, n_heads=n_heads, d_model=32, seq_len=length)


def case_id(case):
  name, params, heads = case
  return "-".join([name] + [f"{k}={v}" for k, v in params.items()] + [f"h{heads[0]}k{heads[1]}"])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_path_matches_reference(case):
  name, params, (n_heads, n_kv) = case
  hooks = hooks_for(name, params, n_heads)
  q, k, v = qkv(0, n_heads, n_kv)
  meta = meta_for(hooks)
  want = run(q, k, v, meta, hooks, "reference")
  assert want.shape == (B, L, n_heads, DH)
  for impl in ("dot_product", "chunked"):
    np.testing.assert_allclose(run(q, k, v, meta, hooks, impl), want, atol=ATOL, err_msg=impl)


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[6]], ids=case_id)
def test_chunked_unmasked_blocks_of_unpacked_rows_match_reference(case):
  # One segment per row: most key blocks of the chunked path are wholly in the past and
  # take its unmasked branch (5 query blocks of 8: 10 such blocks, 5 diagonal ones).
  name, params, (n_heads, n_kv) = case
  hooks = hooks_for(name, params, n_heads, length=40)
  q, k, v = qkv(5, n_heads, n_kv, length=40)
  meta = meta_for(hooks, length=40, packed=False)
  want = run(q, k, v, meta, hooks, "reference")
  np.testing.assert_allclose(run(q, k, v, meta, hooks, "chunked"), want, atol=ATOL)


def test_wholly_allowed_agrees_with_the_pairwise_mask():
  rs = np.random.RandomState(0)
  seen = set()
  for _ in range(200):
    start_q, start_k = rs.randint(0, 12, size=2)
    draw = lambda n, high: jnp.asarray(rs.randint(0, high, size=(2, n)) if rs.rand() < 0.5
                                       else np.full((2, n), 1), jnp.int32)
    q_meta = attention.TokenMeta(jnp.asarray(np.tile(np.arange(start_q, start_q + 4), (2, 1))), None,
                                 draw(4, 2), draw(4, 2))
    k_meta = attention.TokenMeta(jnp.asarray(np.tile(np.arange(start_k, start_k + 3), (2, 1))), None,
                                 draw(3, 2), draw(3, 2))
    expected = bool(attention.allowed(q_meta, k_meta).all())
    assert bool(attention.wholly_allowed(q_meta, k_meta)) == expected
    seen.add(expected)
  assert seen == {True, False}


def test_wholly_allowed_agrees_with_the_pairwise_mask_under_key_windows():
  from rope_lab.pe.base import KeyWindow  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(1)
  seen = set()
  for _ in range(200):
    start_q, start_k = rs.randint(0, 16, size=2)
    window = KeyWindow(size=jnp.int32(rs.randint(1, 12)), sinks=jnp.int32(rs.randint(0, 4)))
    index = lambda start, n: jnp.asarray(np.tile(np.arange(start, start + n), (1, 1)))
    ones = lambda n: jnp.zeros((1, n), jnp.int32)
    q_meta = attention.TokenMeta(index(start_q, 4), index(start_q, 4), ones(4), ones(4))
    k_meta = attention.TokenMeta(index(start_k, 3), index(start_k, 3), ones(3), ones(3))
    expected = bool(attention.allowed(q_meta, k_meta, window).all())
    assert bool(attention.wholly_allowed(q_meta, k_meta, window)) == expected
    seen.add(expected)
  assert seen == {True, False}


def test_pcw_windows_block_attention_across_windows():
  hooks = hooks_for("learned", PCW)
  meta = meta_for(hooks, packed=False)
  np.testing.assert_array_equal(meta.windows[0], np.arange(L) // 4)
  q, k, v = qkv(1, 4, 2)
  # Changing keys/values of window 0 (tokens 0-3) leaves every later window unchanged.
  out = run(q, k, v, meta, hooks, "chunked")
  out2 = run(q, k.at[:, :4].add(1.0), v.at[:, :4].add(1.0), meta, hooks, "chunked")
  np.testing.assert_array_equal(out[:, 4:], out2[:, 4:])
  assert not np.allclose(out[:, :4], out2[:, :4])


@functools.partial(jit, static_argnames="impl")
def pullback(q, k, v, cotangent, meta, hooks, impl):
  """Gradients of sum(out * cotangent) with respect to (q, k, v)."""
  attend = functools.partial(attention.attend, implementation=impl, chunk_size=CHUNK)
  return jax.vjp(lambda q, k, v: attend(q, k, v, meta, hooks), q, k, v)[1](cotangent)


def test_gradients_match_reference_and_are_causal():
  hooks = hooks_for("self_extend", SELF_EXTEND)
  q, k, v = qkv(3, 4, 2)
  meta = meta_for(hooks, packed=False)
  dense = jnp.asarray(np.random.RandomState(9).standard_normal((B, L, 4, DH)), jnp.float32)
  t = 10  # inside the second chunk: its diagonal key block is partly in the future
  row_t = jnp.zeros_like(dense).at[:, t].set(dense[:, t])
  want = pullback(q, k, v, dense, meta, hooks, "reference")
  for impl in attention.IMPLEMENTATIONS:
    for got, ref in zip(pullback(q, k, v, dense, meta, hooks, impl), want):
      np.testing.assert_allclose(got, ref, atol=ATOL, err_msg=impl)
    gq, gk, gv = (np.asarray(g) for g in pullback(q, k, v, row_t, meta, hooks, impl))
    assert np.all(gq[:, t + 1:] == 0) and np.all(gk[:, t + 1:] == 0) and np.all(gv[:, t + 1:] == 0), impl
    assert np.all(gv[:, :t + 1].any(axis=(2, 3))), impl  # every earlier token does contribute


def test_soft_cap_reference_and_chunked_agree_and_dot_product_refuses():
  hooks = hooks_for("rope", {})
  q, k, v = qkv(5, 4, 2)
  q = q * 4.0  # large logits so the cap bites
  meta = meta_for(hooks)
  capped = run(q, k, v, meta, hooks, "reference", soft_cap=2.0)
  np.testing.assert_allclose(run(q, k, v, meta, hooks, "chunked", soft_cap=2.0), capped, atol=ATOL)
  assert not np.allclose(capped, run(q, k, v, meta, hooks, "reference"), atol=1e-3)
  with pytest.raises(ValueError, match="soft cap"):
    run(q, k, v, meta, hooks, "dot_product", soft_cap=2.0)


def test_unknown_implementation_is_an_error():
  hooks = hooks_for("nope", {})
  q, k, v = qkv(0, 4, 2)
  with pytest.raises(ValueError, match="unknown attention implementation"):
    attention.attend(q, k, v, meta_for(hooks), hooks, implementation="flash")


# ----------------------------------------------------------------------------- SelfExtend


def test_self_extend_with_window_beyond_length_equals_rope():
  wide = dict(SELF_EXTEND, window=32, original_max_position_embeddings=64)
  se_hooks, rope_hooks = hooks_for("self_extend", wide), hooks_for("rope", {})
  q, k, v = qkv(6, 4, 2)
  meta = meta_for(rope_hooks)
  want = run(q, k, v, meta, rope_hooks, "reference")
  for impl in attention.IMPLEMENTATIONS:
    np.testing.assert_allclose(run(q, k, v, meta, se_hooks, impl), want, atol=ATOL, err_msg=impl)


def rotate_half_np(x, position, base=10000.0):
  """RoPE of one head vector in the rotate-half layout, from the formula, in float64."""
  d = x.shape[-1]
  theta = base ** (-np.arange(0, d, 2) / d) * position
  x1, x2 = x[: d // 2], x[d // 2:]
  return np.concatenate([x1 * np.cos(theta) - x2 * np.sin(theta), x2 * np.cos(theta) + x1 * np.sin(theta)])


def test_self_extend_merge_matches_direct_per_pair_computation():
  group, window = SELF_EXTEND["group_size"], SELF_EXTEND["window"]
  hooks = hooks_for("self_extend", SELF_EXTEND)
  q, k, v = (np.asarray(x, np.float64) for x in qkv(7, 4, 2))
  want = np.zeros(q.shape)
  for b, h, i in np.ndindex(B, 4, L):
    kv = h // 2  # query head h reads kv head h // (H / K)
    scores = []
    for j in range(i + 1):
      if i - j < window:
        pq, pk = i, j
      else:  # Jin et al. 2024: grouped query position floor(i/G) + W - floor(W/G), key floor(j/G)
        pq, pk = i // group + window - window // group, j // group
      scores.append(rotate_half_np(q[b, i, h], pq) @ rotate_half_np(k[b, j, kv], pk) / np.sqrt(DH))
    p = np.exp(np.array(scores) - max(scores))
    want[b, i, h] = (p / p.sum()) @ v[b, : i + 1, kv]
  meta = meta_for(hooks, packed=False)
  args = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
  for impl in attention.IMPLEMENTATIONS:
    np.testing.assert_allclose(run(*args, meta, hooks, impl), want, atol=ATOL, err_msg=impl)


def test_bfloat16_chunked_stays_close_to_float32_reference():
  """bfloat16 q, k, v: float32 logits and softmax keep the error at bfloat16 rounding of v.

  (The other paths run in bfloat16 in tests/test_model.py.)
  """
  hooks = hooks_for("self_extend", SELF_EXTEND)
  meta = meta_for(hooks)
  q, k, v = qkv(8, 4, 2)
  want = run(q, k, v, meta, hooks, "reference")
  got = run(*(x.astype(jnp.bfloat16) for x in (q, k, v)), meta, hooks, "chunked")
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=5e-2)


def test_chunked_skips_blocks_of_other_segments_and_windows_exactly():
  # Blocks of 8: the second (document 2) and the last two (document 3, two parallel-context
  # windows) share no segment or window id with earlier key blocks, so those are skipped.
  hooks = pe.make("rope").hooks(head_dim=8, n_heads=2, d_model=16, seq_len=32)
  rs = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rs.randn(1, 32, 2, 8), jnp.float32) for _ in range(3))
  segments = jnp.asarray([[1] * 8 + [2] * 8 + [3] * 16], jnp.int32)
  positions = jnp.asarray([list(range(8)) * 2 + list(range(16))], jnp.int32)
  windows = jnp.asarray([[0] * 16 + [1] * 8 + [2] * 8], jnp.int32)
  meta = attention.TokenMeta(jnp.arange(32)[None], positions, segments, windows)
  want = attention.attend(q, k, v, meta, hooks, implementation="reference")
  got = attention.attend(q, k, v, meta, hooks, implementation="chunked", chunk_size=8)
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("sinks", [0, 2])
def test_chunked_forward_over_needed_key_blocks_equals_reference_and_the_full_scan(sinks):
  # A sliding key window of 10 tokens over 48 tokens in blocks of 8: without sinks the first
  # needed key block of the later query blocks is not block 0, so the forward's loop starts
  # part-way; with sinks block 0 is always needed. Row 0 is packed (two documents), row 1
  # is one document, and the row is not a multiple of the block length.
  from rope_lab.pe.base import KeyWindow  # pylint: disable=g-import-not-at-top
  length = 45
  hooks = hooks_for("rope", {}, length=length).replace(
      key_window=KeyWindow(size=jnp.int32(10), sinks=jnp.int32(sinks)))
  q, k, v = qkv(11, 4, 2, length=length)
  positions = jnp.asarray(np.stack([np.r_[np.arange(20), np.arange(25)], np.arange(length)]), jnp.int32)
  segments = jnp.asarray(np.stack([[1] * 20 + [2] * 25, [1] * length]), jnp.int32)
  meta = attention.TokenMeta(jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (B, length)), positions,
                             segments, jnp.zeros((B, length), jnp.int32))
  want = run(q, k, v, meta, hooks, "reference")
  rot = attention.rotate(hooks, q, k, meta.positions)
  forward = jit(functools.partial(attention._blockwise, chunk_size=8, soft_cap=None, bounded=True))  # pylint: disable=protected-access
  scanned = jit(functools.partial(attention._blockwise, chunk_size=8, soft_cap=None, bounded=False))  # pylint: disable=protected-access
  got = forward(rot, meta, rot, v, meta, hooks)
  np.testing.assert_allclose(got, want, atol=ATOL)
  np.testing.assert_allclose(got, scanned(rot, meta, rot, v, meta, hooks), atol=1e-6)
  # Queries that see no key at all (a shard of padding): zero output, not NaN.
  pad = attention.TokenMeta(jnp.full((B, 8), attention._PAD_INDEX, jnp.int32), *(jnp.zeros((B, 8), jnp.int32),) * 3)  # pylint: disable=protected-access
  q_pad = attention.Rotated(rot.q[:, :8], rot.k)
  assert np.all(np.asarray(forward(q_pad, pad, rot, v, meta, hooks)) == 0)
