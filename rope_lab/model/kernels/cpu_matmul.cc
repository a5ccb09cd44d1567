// bfloat16 matrix product with float32 accumulation on AVX512-BF16 (vdpbf16ps).
//
// C[M, N] = A[M, K] . B[K, N], A and B bfloat16, C float32 or bfloat16 (rounded once, from
// the float32 sum). Either operand may arrive transposed (A as [K, M], B as [N, K]): the
// backward pass's dX = dY W^T and dW = X^T dY read their operands in place.
//
// vdpbf16ps multiplies pairs: lane i of the float32 accumulator gains a[2i] b[2i] +
// a[2i+1] b[2i+1]. Both operands are packed once per call into that pair layout:
//   A: panels of kRows rows; per k-pair, kRows 32-bit words (A[m, 2p], A[m, 2p+1]),
//      each broadcast to all 16 lanes;
//   B: panels of kVecs * 16 columns; per k-pair, kVecs vectors of 16 words (B[2p, n], B[2p+1, n]).
// Rows past M, columns past N and the odd K's last partner are zero. The microkernel keeps
// kRows x kVecs accumulators in registers across a block of k-pairs; a thread accumulates
// one tile of C (kTileRows x kTileCols) in a float32 buffer in cache and writes it out
// (converted, clipped to M and N) after the last k block. Leading batch dimensions of A
// are looped over (or stacked into rows when B has none); either operand may be shared (its
// batch dimensions all 1).
//
// Only AVX512-BF16 code is here: cpu_matmul.py builds it where /proc/cpuinfo lists
// avx512_bf16 (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and later).

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using rope_lab_kernels::parallel_for;

namespace {


// Measured on 2 Zen 4 cores (benchmarks/README.md): 8 rows x 3 vectors (24 accumulators) and
// 4 x 6, 14 x 2, 6 x 4 ran within a few percent of one another; blocks of 64 k-pairs were slower.
constexpr int kRows = 8;                       // rows of A per microkernel
constexpr int kVecs = 3;                       // 16-column vectors of B per microkernel
constexpr int kCols = 16 * kVecs;
constexpr int64_t kPairBlock = 128;  // k-pairs per block: a B panel of 24 KiB stays in L1
constexpr int64_t kTilePanelsM = 12;  // a thread's tile of C: 96 x 384 floats (144 KiB, in L2)
constexpr int64_t kTilePanelsN = 8;
constexpr int64_t kTileRows = kRows * kTilePanelsM;
constexpr int64_t kTileCols = kCols * kTilePanelsN;

// One operand as a strided view: element (i, j) at data[i * si + j * sj].
struct View {
  const uint16_t* data;
  int64_t si, sj;
};

inline uint32_t pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

// `width` lines of a panel (rows of A or columns of B), `valid` of them real, line l's element
// j of k at base[l * line_stride + j * k_stride]: dst[p * width + l] = pair (2p, 2p + 1).
void pack_lines(const uint16_t* base, int64_t line_stride, int64_t k_stride, int64_t valid, int width, int64_t k,
                uint32_t* dst) {
  const int64_t pairs = (k + 1) / 2;
  for (int l = 0; l < width; ++l) {
    const uint16_t* line = base + l * line_stride;
    for (int64_t p = 0; p < pairs; ++p) {
      if (l >= valid) {
        dst[p * width + l] = 0;
      } else if (k_stride == 1 && 2 * p + 1 < k) {  // a pair is one 32-bit word
        std::memcpy(dst + p * width + l, line + 2 * p, 4);
      } else {
        dst[p * width + l] = pair(line[2 * p * k_stride], 2 * p + 1 < k ? line[(2 * p + 1) * k_stride] : 0);
      }
    }
  }
}

// Panel `panel` of A (rows panel * kRows ...) for all k-pairs: dst[p * kRows + r].
void pack_a_panel(const View& a, int64_t m, int64_t k, int64_t panel, uint32_t* dst) {
  const int64_t m0 = panel * kRows;
  pack_lines(a.data + m0 * a.si, a.si, a.sj, std::min<int64_t>(kRows, m - m0), kRows, k, dst);
}

// Panel `panel` of B (columns panel * kCols ...) for all k-pairs: dst[p * kCols + c].
void pack_b_panel(const View& b, int64_t k, int64_t n, int64_t panel, uint32_t* dst) {
  const int64_t pairs = (k + 1) / 2, n0 = panel * kCols;
  const int64_t cols = std::min<int64_t>(kCols, n - n0);
  if (b.sj == 1 && cols == kCols) {  // rows contiguous along n: interleave two rows 16 at a time
    const __m512i idx_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7,
                                            38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i idx_hi = _mm512_add_epi16(idx_lo, _mm512_set1_epi16(16));
    for (int64_t p = 0; p < pairs; ++p) {
      const uint16_t* r0 = b.data + (2 * p) * b.si + n0;
      const bool odd = 2 * p + 1 >= k;
      for (int64_t c = 0; c < kCols; c += 32) {
        const int64_t len = std::min<int64_t>(32, kCols - c);
        const __mmask32 mask = len == 32 ? ~__mmask32(0) : (__mmask32(1) << len) - 1;
        const __m512i x0 = _mm512_maskz_loadu_epi16(mask, r0 + c);
        const __m512i x1 = odd ? _mm512_setzero_si512() : _mm512_maskz_loadu_epi16(mask, r0 + b.si + c);
        _mm512_storeu_si512(dst + p * kCols + c, _mm512_permutex2var_epi16(x0, idx_lo, x1));
        if (len > 16) _mm512_storeu_si512(dst + p * kCols + c + 16, _mm512_permutex2var_epi16(x0, idx_hi, x1));
      }
    }
    return;
  }
  pack_lines(b.data + n0 * b.sj, b.sj, b.si, cols, kCols, k, dst);
}

// c[kRows][kCols] (row stride ldc) = (accumulate ? c : 0) + a-panel . b-panel over `pairs`.
void microkernel(const uint32_t* a, const uint32_t* b, int64_t pairs, float* c, int64_t ldc, bool accumulate) {
  __m512 acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v)
      acc[r][v] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + p * kCols + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[p * kRows + r]));
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
}

// Thread-local scratch (the pool's threads may have small stacks), reused across calls:
// slot 0 packed A, 1 packed B (both on the calling thread), 2 the tile of C.
enum Slot { kPackedA, kPackedB, kTile, kSlots };

template <typename T>
T* scratch(size_t count, Slot slot) {
  thread_local std::unique_ptr<char, decltype(&std::free)> buffers[kSlots] = {
      {nullptr, &std::free}, {nullptr, &std::free}, {nullptr, &std::free}};
  thread_local size_t capacity[kSlots] = {};
  const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
  if (capacity[slot] < bytes) {
    buffers[slot].reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
    if (!buffers[slot]) std::abort();
    capacity[slot] = bytes;
  }
  return reinterpret_cast<T*>(buffers[slot].get());
}

template <typename Out>
void store_tile(const float* tile, int64_t rows, int64_t cols, Out* c, int64_t ldc);

template <>
void store_tile<float>(const float* tile, int64_t rows, int64_t cols, float* c, int64_t ldc) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * ldc, tile + r * kTileCols, cols * sizeof(float));
}

template <>
void store_tile<uint16_t>(const float* tile, int64_t rows, int64_t cols, uint16_t* c, int64_t ldc) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(tile + r * kTileCols + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + j), (__m256i)h);
    }
    if (j < cols) {
      const __mmask16 mask = (__mmask16(1) << (cols - j)) - 1;
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, tile + r * kTileCols + j));
      _mm256_mask_storeu_epi16(c + r * ldc + j, mask, (__m256i)h);
    }
  }
}

template <typename Out>
void gemm(ffi::ThreadPool& pool, const View& a, const View& b, int64_t m, int64_t n, int64_t k, Out* c) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m * n; ++i) c[i] = Out(0);
    return;
  }
  const int64_t pairs = (k + 1) / 2;
  const int64_t a_panels = (m + kRows - 1) / kRows, b_panels = (n + kCols - 1) / kCols;
  uint32_t* a_packed = scratch<uint32_t>(static_cast<size_t>(a_panels * pairs * kRows), kPackedA);
  uint32_t* b_packed = scratch<uint32_t>(static_cast<size_t>(b_panels * pairs * kCols), kPackedB);
  parallel_for(pool, a_panels + b_panels, [&](int64_t i) {
    if (i < a_panels) {
      pack_a_panel(a, m, k, i, a_packed + i * pairs * kRows);
    } else {
      pack_b_panel(b, k, n, i - a_panels, b_packed + (i - a_panels) * pairs * kCols);
    }
  });
  const int64_t tiles_m = (a_panels + kTilePanelsM - 1) / kTilePanelsM;
  const int64_t tiles_n = (b_panels + kTilePanelsN - 1) / kTilePanelsN;
  parallel_for(pool, tiles_m * tiles_n, [&](int64_t t) {
    // Tiles of one column block run together, so its B panels stay in the shared cache.
    const int64_t tm = t % tiles_m, tn = t / tiles_m;
    const int64_t pm0 = tm * kTilePanelsM, pm1 = std::min(a_panels, pm0 + kTilePanelsM);
    const int64_t pn0 = tn * kTilePanelsN, pn1 = std::min(b_panels, pn0 + kTilePanelsN);
    float* tile = scratch<float>(static_cast<size_t>(kTileRows * kTileCols), kTile);
    for (int64_t p0 = 0; p0 < pairs; p0 += kPairBlock) {
      const int64_t len = std::min(kPairBlock, pairs - p0);
      for (int64_t pn = pn0; pn < pn1; ++pn) {
        const uint32_t* bp = b_packed + (pn * pairs + p0) * kCols;
        for (int64_t pm = pm0; pm < pm1; ++pm) {
          microkernel(a_packed + (pm * pairs + p0) * kRows, bp, len,
                      tile + (pm - pm0) * kRows * kTileCols + (pn - pn0) * kCols, kTileCols, p0 > 0);
        }
      }
    }
    const int64_t r0 = pm0 * kRows, c0 = pn0 * kCols;
    store_tile<Out>(tile, std::min(kTileRows, m - r0), std::min(kTileCols, n - c0), c + r0 * n + c0, n);
  });
}

int64_t product(ffi::Span<const int64_t> dims, size_t count) {
  int64_t p = 1;
  for (size_t i = 0; i < count; ++i) p *= dims[i];
  return p;
}

template <typename Out>
void batched(ffi::ThreadPool& pool, const uint16_t* ap, const uint16_t* bp, Out* cp, int64_t batch, bool a_shared,
             bool b_shared, int64_t m, int64_t n, int64_t k, bool transpose_a, bool transpose_b) {
  if (b_shared && !a_shared && !transpose_a) {  // one product: the batch's rows stacked
    m *= batch;
    batch = 1;
  }
  for (int64_t i = 0; i < batch; ++i) {
    const uint16_t* a = ap + (a_shared ? 0 : i * m * k);
    const uint16_t* b = bp + (b_shared ? 0 : i * k * n);
    // (i, j) of A is (row m, column k); of B (row k, column n).
    const View av = transpose_a ? View{a, 1, m} : View{a, k, 1};
    const View bv = transpose_b ? View{b, 1, k} : View{b, n, 1};
    gemm(pool, av, bv, m, n, k, cp + i * m * n);
  }
}

ffi::Error matmul(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                  bool transpose_a, bool transpose_b) {
  const auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (a.element_type() != ffi::DataType::BF16 || b.element_type() != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("cpu bf16 matmul: a and b must be bfloat16");
  const size_t rank = ad.size();
  if (rank < 2 || bd.size() != rank || cd.size() != rank)
    return ffi::Error::InvalidArgument("cpu bf16 matmul: a, b and c must be (batches of) matrices of one rank");
  const int64_t m = transpose_a ? ad[rank - 1] : ad[rank - 2], k = transpose_a ? ad[rank - 2] : ad[rank - 1];
  const int64_t kb = transpose_b ? bd[rank - 1] : bd[rank - 2], n = transpose_b ? bd[rank - 2] : bd[rank - 1];
  // A's and B's batch dimensions are C's, or all 1 (one operand shared by the batch).
  const int64_t batch = product(cd, rank - 2), a_batch = product(ad, rank - 2), b_batch = product(bd, rank - 2);
  bool batch_matches = true;
  for (size_t i = 0; i + 2 < rank; ++i)
    batch_matches &= (a_batch == 1 || ad[i] == cd[i]) && (b_batch == 1 || bd[i] == cd[i]);
  if (k != kb || cd[rank - 2] != m || cd[rank - 1] != n || !batch_matches)
    return ffi::Error::InvalidArgument("cpu bf16 matmul: shapes do not match");
  const auto* ap = static_cast<const uint16_t*>(a.untyped_data());
  const auto* bp = static_cast<const uint16_t*>(b.untyped_data());
  switch (c->element_type()) {
    case ffi::DataType::F32:
      batched(pool, ap, bp, static_cast<float*>(c->untyped_data()), batch, a_batch == 1, b_batch == 1, m, n, k,
              transpose_a, transpose_b);
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      batched(pool, ap, bp, static_cast<uint16_t*>(c->untyped_data()), batch, a_batch == 1, b_batch == 1, m, n, k,
              transpose_a, transpose_b);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("cpu bf16 matmul: c must be float32 or bfloat16");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RopeLabCpuMatmulBf16, matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));
