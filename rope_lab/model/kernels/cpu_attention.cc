// Causal attention forward on the CPU in one pass over each block (flash attention).
//
// XLA:CPU runs the chunked attention as separate loops over every [H, C, C] block (q.k, row
// max, exp and sum, p.v), each reading and writing the whole block through memory. This
// kernel does all four on a block of 192 queries x 256 keys while it is in cache, with the
// online softmax of the chunked path (running max m, running sum l, rescaled accumulator).
//
// Contract (rope_lab/model/kernels/cpu_flash.py checks it before calling):
//   q [B, L, H, D], k and v [B, L, K, D], float32, H a multiple of K (grouped kv heads),
//   D a multiple of 16 and at most 256; out [B, L, H, D] = softmax(scale * q.k^T, causal) v,
//   query i seeing keys 0..i of its own row (no segments, bias or soft cap).
//
// Vectors are GCC/Clang vector extensions of 16 floats: AVX-512 registers where the CPU has
// them (the library is built with -march=native), pairs or quads of narrower ones elsewhere.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using rope_lab_kernels::parallel_for;

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int kLanes = 16;
// Block sizes measured on 2 cores (benchmarks/README.md): 192 x 256 beat 48 x 128 by 10-18% at
// 8K-32K tokens; the scores of a block (192 KiB) stay in L2, each tile of keys is read once
// per 8 query rows from L1.
constexpr int kQueryBlock = 192;  // a multiple of every row tile below (4, 8, 6, 3, 1)
constexpr int kKeyBlock = 256;

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{} + x; }

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}
inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// exp(x) for the softmax's x <= 0: Cephes' expf polynomial after the reduction
// x = n ln2 + r, |r| <= ln2 / 2 (relative error about 1e-7). Below -87.3 (where 2^n would be
// subnormal, and for masked logits, -inf) the result is exactly 0; NaN stays NaN.
inline vf vexp(vf x) {
  // Adding 1.5 * 2^23 rounds x / ln2 to the integer n, which then sits in the low mantissa
  // bits of t: 2^n is built from t's bits without a float-to-int conversion.
  const vf magic = splat(12582912.0f);
  const vf t = x * 1.44269504088896341f + magic;
  const vf n = t - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  vi t_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  const vi bits = (t_bits + (127 - 0x4B400000)) << 23;
  vf two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return x < splat(-87.3f) ? splat(0.f) : p * two_n;
}

struct Problem {
  int64_t batch, length, heads, kv_heads, head_dim;
  float scale;
  const float* q;
  const float* k;
  const float* v;
  float* out;
  float* k_tiles;  // per (b, kv head): [ceil(L / 16)][D][16], keys past L zero
  int64_t tiles;   // ceil(L / 16)
};

// Packs k of (b, kv head) as tiles of 16 keys, each tile's D x 16 floats contiguous, so the
// score kernel reads 16 consecutive keys of one dimension as one vector.
void pack_keys(const Problem& pr, int64_t b, int64_t kvh) {
  const int64_t d_n = pr.head_dim;
  float* dst = pr.k_tiles + (b * pr.kv_heads + kvh) * pr.tiles * d_n * kLanes;
  for (int64_t t = 0; t < pr.tiles; ++t) {
    float* tile = dst + t * d_n * kLanes;
    for (int j = 0; j < kLanes; ++j) {
      const int64_t key = t * kLanes + j;
      const float* row = pr.k + ((b * pr.length + key) * pr.kv_heads + kvh) * d_n;
      for (int64_t d = 0; d < d_n; ++d) tile[d * kLanes + j] = key < pr.length ? row[d] : 0.f;
    }
  }
}

// scores[r][j] = q[r] . k[j] for kQueryBlock rows and `tiles` tiles of 16 keys; R rows and T
// tiles at a time (R x T accumulators in registers).
template <int R, int T>
void block_scores(const float* q_rows, const float* k_tiles, int64_t tiles, int64_t d_n, float* scores) {
  for (int r0 = 0; r0 < kQueryBlock; r0 += R) {
    int64_t t = 0;
    for (; t + T <= tiles; t += T) {
      const float* k0 = k_tiles + t * d_n * kLanes;
      vf acc[R][T];
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < T; ++u) acc[r][u] = vf{};
      for (int64_t d = 0; d < d_n; ++d) {
        vf kv[T];
        for (int u = 0; u < T; ++u) kv[u] = load(k0 + (u * d_n + d) * kLanes);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const float x = q_rows[(r0 + r) * d_n + d];
          for (int u = 0; u < T; ++u) acc[r][u] += x * kv[u];
        }
      }
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < T; ++u) store(scores + (r0 + r) * kKeyBlock + (t + u) * kLanes, acc[r][u]);
    }
    for (; t < tiles; ++t) {
      const float* k0 = k_tiles + t * d_n * kLanes;
      vf acc0[R];
      for (int r = 0; r < R; ++r) acc0[r] = vf{};
      for (int64_t d = 0; d < d_n; ++d) {
        const vf a = load(k0 + d * kLanes);
        for (int r = 0; r < R; ++r) acc0[r] += q_rows[(r0 + r) * d_n + d] * a;
      }
      for (int r = 0; r < R; ++r) store(scores + (r0 + r) * kKeyBlock + t * kLanes, acc0[r]);
    }
  }
}

// acc[r] = acc[r] * alpha[r] + sum_j p[r][j] v[j] for `keys` keys; R rows of DV vectors each
// (R * DV accumulators in registers). v rows are `v_stride` floats apart.
template <int DV, int R>
void block_values(const float* p, int64_t keys, const float* v, int64_t v_stride, const float* alpha,
                  float* acc) {
  constexpr int D = DV * kLanes;
  for (int r0 = 0; r0 < kQueryBlock; r0 += R) {
    vf a[R][DV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < DV; ++c) a[r][c] = load(acc + (r0 + r) * D + c * kLanes) * alpha[r0 + r];
    for (int64_t j = 0; j < keys; ++j) {
      vf vj[DV];
      for (int c = 0; c < DV; ++c) vj[c] = load(v + j * v_stride + c * kLanes);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float w = p[(r0 + r) * kKeyBlock + j];
        for (int c = 0; c < DV; ++c) a[r][c] += w * vj[c];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < DV; ++c) store(acc + (r0 + r) * D + c * kLanes, a[r][c]);
  }
}

// A block's scratch (up to 576 KiB: on the heap, as the pool's threads may have small stacks),
// kept per thread and reused by its later blocks and calls.
float* thread_scratch(size_t floats) {
  thread_local std::unique_ptr<float, decltype(&std::free)> buffer(nullptr, &std::free);
  thread_local size_t capacity = 0;
  if (capacity < floats) {
    buffer.reset(static_cast<float*>(std::aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64)));
    if (!buffer) std::abort();
    capacity = floats;
  }
  return buffer.get();
}

constexpr int rows_for(int dv) { return dv <= 2 ? 8 : dv <= 4 ? 6 : dv <= 8 ? 3 : 1; }

// One query block of one head: queries [q0, q0 + 48) against keys [0, q1).
template <int DV>
void query_block(const Problem& pr, int64_t b, int64_t h, int64_t q0) {
  constexpr int D = DV * kLanes;
  float* q_rows = thread_scratch(2 * kQueryBlock * D + kQueryBlock * kKeyBlock + 3 * kQueryBlock);
  float* acc = q_rows + kQueryBlock * D;
  float* scores = acc + kQueryBlock * D;
  float* m = scores + kQueryBlock * kKeyBlock;
  float* l = m + kQueryBlock;
  float* alpha = l + kQueryBlock;

  const int64_t kvh = h / (pr.heads / pr.kv_heads);
  const int64_t q1 = std::min(pr.length, q0 + kQueryBlock);
  const int64_t rows = q1 - q0;
  for (int r = 0; r < kQueryBlock; ++r) {
    const float* src = pr.q + ((b * pr.length + q0 + r) * pr.heads + h) * D;
    for (int d = 0; d < D; ++d) q_rows[r * D + d] = r < rows ? src[d] * pr.scale : 0.f;
    m[r] = -INFINITY;
    l[r] = 0.f;
  }
  std::memset(acc, 0, kQueryBlock * D * sizeof(float));
  const float* k_tiles = pr.k_tiles + (b * pr.kv_heads + kvh) * pr.tiles * D * kLanes;
  const int64_t v_stride = pr.kv_heads * D;
  const float* v_base = pr.v + (b * pr.length * pr.kv_heads + kvh) * D;

  for (int64_t k0 = 0; k0 < q1; k0 += kKeyBlock) {
    const int64_t keys = std::min<int64_t>(kKeyBlock, q1 - k0);
    const int64_t tiles = (keys + kLanes - 1) / kLanes;
    block_scores<4, 4>(q_rows, k_tiles + (k0 / kLanes) * D * kLanes, tiles, D, scores);
    const bool diagonal = k0 + keys > q0;  // some keys of this block lie in some query's future
    for (int r = 0; r < kQueryBlock; ++r) {
      float* s = scores + r * kKeyBlock;
      if (diagonal) {  // key k0 + j is visible to query q0 + r iff k0 + j <= q0 + r (and exists)
        const int64_t visible = std::min(keys, std::max<int64_t>(0, q0 + r - k0 + 1));
        for (int64_t j = visible; j < tiles * kLanes; ++j) s[j] = -INFINITY;
      } else {
        for (int64_t j = keys; j < tiles * kLanes; ++j) s[j] = -INFINITY;
      }
      vf mx = splat(-INFINITY);
      for (int64_t t = 0; t < tiles; ++t) {
        const vf x = load(s + t * kLanes);
        mx = x > mx ? x : mx;
      }
      const float m_new = std::max(m[r], hmax(mx));
      if (m_new == -INFINITY) {  // padding row past L: every key masked
        alpha[r] = 1.f;
        for (int64_t t = 0; t < tiles; ++t) store(s + t * kLanes, vf{});
        continue;
      }
      alpha[r] = std::exp(m[r] - m_new);
      vf sum = vf{};
      for (int64_t t = 0; t < tiles; ++t) {
        const vf e = vexp(load(s + t * kLanes) - m_new);
        store(s + t * kLanes, e);
        sum += e;
      }
      l[r] = l[r] * alpha[r] + hsum(sum);
      m[r] = m_new;
    }
    block_values<DV, rows_for(DV)>(scores, keys, v_base + k0 * v_stride, v_stride, alpha, acc);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = pr.out + ((b * pr.length + q0 + r) * pr.heads + h) * D;
    const float inv = 1.f / l[r];
    for (int d = 0; d < D; ++d) dst[d] = acc[r * D + d] * inv;
  }
}

using BlockFn = void (*)(const Problem&, int64_t, int64_t, int64_t);

BlockFn block_fn(int64_t head_dim) {
  switch (head_dim / kLanes) {
    case 1: return query_block<1>;
    case 2: return query_block<2>;
    case 3: return query_block<3>;
    case 4: return query_block<4>;
    case 5: return query_block<5>;
    case 6: return query_block<6>;
    case 7: return query_block<7>;
    case 8: return query_block<8>;
    case 16: return query_block<16>;
    default: return nullptr;
  }
}

ffi::Error forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out, float scale) {
  const auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || v.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("cpu flash attention: q, k, v must be [B, L, heads, D]");
  Problem pr{qd[0], qd[1], qd[2], kd[2], qd[3], scale, q.typed_data(), k.typed_data(),
             v.typed_data(), out->typed_data(), nullptr, 0};
  if (kd[0] != pr.batch || kd[1] != pr.length || kd[3] != pr.head_dim || pr.kv_heads < 1 ||
      pr.heads % pr.kv_heads != 0)
    return ffi::Error::InvalidArgument("cpu flash attention: k/v shape does not match q");
  const BlockFn fn = pr.head_dim % kLanes == 0 ? block_fn(pr.head_dim) : nullptr;
  if (fn == nullptr)
    return ffi::Error::InvalidArgument("cpu flash attention: head_dim must be 16, 32, ..., 128 or 256");
  if (pr.length == 0 || pr.batch == 0) return ffi::Error::Success();
  pr.tiles = (pr.length + kLanes - 1) / kLanes;
  const size_t tile_floats = static_cast<size_t>(pr.batch * pr.kv_heads * pr.tiles * pr.head_dim * kLanes);
  std::unique_ptr<float, decltype(&std::free)> k_tiles(
      static_cast<float*>(std::aligned_alloc(64, ((tile_floats * sizeof(float) + 63) / 64) * 64)), &std::free);
  if (!k_tiles) return ffi::Error::Internal("cpu flash attention: out of memory packing the keys");
  pr.k_tiles = k_tiles.get();

  parallel_for(pool, pr.batch * pr.kv_heads,
               [&](int64_t i) { pack_keys(pr, i / pr.kv_heads, i % pr.kv_heads); });
  // Tasks from the longest (the last query block) down, so the short ones fill in at the end;
  // the heads sharing a kv head run one after another, while its keys are in cache.
  const int64_t blocks = (pr.length + kQueryBlock - 1) / kQueryBlock;
  parallel_for(pool, pr.batch * pr.heads * blocks, [&](int64_t i) {
    const int64_t block = blocks - 1 - i / (pr.batch * pr.heads);
    const int64_t bh = i % (pr.batch * pr.heads);
    fn(pr, bh / pr.heads, bh % pr.heads, block * kQueryBlock);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RopeLabCpuFlashForward, forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
