// The matmul microkernel that dot_general lowers to for f32 and bf16 inputs
// with f32 accumulation: C (+)= A @ B on strided 2-D windows.
//
// Packs B into NR-wide column panels and A into MR-row panels (converting
// bf16 to f32 on the way), then runs an MR x NR register-tiled FMA kernel
// written with GCC vector extensions, which the host compiler maps to the
// widest vectors it has (the runtime is built on the machine it runs on:
// -march=native).  Sums run over k in order within each KC chunk, so a row
// of C is a plain sequential dot product per KC block.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <vector>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define PALLAS_CPU_BF16_DOT 1
#endif

#include "abi.h"
#include "runtime_context.h"

namespace pallas_cpu {
namespace {

constexpr int kMR = 8;
constexpr int kNR = 32;
constexpr int kKC = 256;
typedef float V16 __attribute__((vector_size(64), aligned(4)));

struct Matrix {
  char* base;
  int64_t rows, cols;
  int64_t row_stride, col_stride;  // in elements
};

Matrix FromMemref2D(void* aligned, int64_t offset, int64_t s0, int64_t s1,
                    int64_t st0, int64_t st1, int64_t elem_bytes) {
  return Matrix{static_cast<char*>(aligned) + offset * elem_bytes, s0, s1, st0,
                st1};
}

// C[0:mr, 0:nr] (+)= A (mr x kb) . Bp (kb x NR); the tile is full-size in
// registers, the valid part is written back.  A is read in place through
// strides: row i of the tile at a + a_off[i], step a_ks per k (a packed
// panel: offsets 0..MR-1, step MR; a row-major f32 block: offsets i * row
// stride, step 1; a transposed one: offsets i, step its row stride).  Rows
// past mr repeat row 0, whose results are never written.
inline void MicroKernel(const float* a, const int64_t* a_off, int64_t a_ks,
                        const float* bp, int64_t kb, float* c, int64_t c_rs,
                        int64_t mr, int64_t nr, bool accumulate) {
  V16 acc[kMR][2];
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = V16{};
  int64_t off[kMR];
  for (int i = 0; i < kMR; ++i) off[i] = a_off[i];
  for (int64_t k = 0; k < kb; ++k) {
    V16 b0, b1;
    std::memcpy(&b0, bp + k * kNR, 64);
    std::memcpy(&b1, bp + k * kNR + 16, 64);
    const float* ak = a + k * a_ks;
    for (int i = 0; i < kMR; ++i) {
      const float ai = ak[off[i]];
      acc[i][0] += ai * b0;
      acc[i][1] += ai * b1;
    }
  }
  for (int64_t i = 0; i < mr; ++i) {
    float tile[kNR];
    std::memcpy(tile, &acc[i][0], 64);
    std::memcpy(tile + 16, &acc[i][1], 64);
    float* row = c + i * c_rs;
    if (accumulate) {
      for (int64_t j = 0; j < nr; ++j) row[j] += tile[j];
    } else {
      for (int64_t j = 0; j < nr; ++j) row[j] = tile[j];
    }
  }
}

template <bool kBf16>
inline float Ld(const char* p) {
  if constexpr (!kBf16) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, p, 2);
    uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
}

// B[k0:k0+kb, :] as NR-wide column panels, zero-padded; unit-stride rows of
// full panels take a straight (vectorizable) loop.
template <bool kBf16>
void PackB(const Matrix& b, int64_t k0, int64_t kb, int64_t n, float* bp) {
  constexpr int64_t eb = kBf16 ? 2 : 4;
  const int64_t n_panels = (n + kNR - 1) / kNR;
  if (b.row_stride == 1 && b.col_stride != 1) {
    // A transposed B (q @ k.T): each column is contiguous along k; copy
    // column by column so that reads stream (the panel itself fits in L1).
    for (int64_t p = 0; p < n_panels; ++p) {
      float* dst = bp + p * kKC * kNR;
      for (int64_t j = 0; j < kNR; ++j) {
        const int64_t col = p * kNR + j;
        if (col >= n) {
          for (int64_t kk = 0; kk < kb; ++kk) dst[kk * kNR + j] = 0.f;
          continue;
        }
        const char* src = b.base + (col * b.col_stride + k0) * eb;
        for (int64_t kk = 0; kk < kb; ++kk) {
          dst[kk * kNR + j] = Ld<kBf16>(src + kk * eb);
        }
      }
    }
    return;
  }
  for (int64_t p = 0; p < n_panels; ++p) {
    float* dst = bp + p * kKC * kNR;
    const bool full = (p + 1) * kNR <= n;
    for (int64_t kk = 0; kk < kb; ++kk) {
      const char* row = b.base + (k0 + kk) * b.row_stride * eb;
      float* out = dst + kk * kNR;
      if (full && b.col_stride == 1) {
        const char* src = row + p * kNR * eb;
        for (int64_t j = 0; j < kNR; ++j) out[j] = Ld<kBf16>(src + j * eb);
      } else {
        for (int64_t j = 0; j < kNR; ++j) {
          int64_t col = p * kNR + j;
          out[j] = col < n ? Ld<kBf16>(row + col * b.col_stride * eb) : 0.f;
        }
      }
    }
  }
}

// A[i0:i0+MR, k0:k0+kb] transposed into kb x MR, zero-padded rows.
template <bool kBf16>
void PackA(const Matrix& a, int64_t i0, int64_t mr, int64_t k0, int64_t kb,
           float* ap) {
  constexpr int64_t ea = kBf16 ? 2 : 4;
  for (int64_t i = 0; i < kMR; ++i) {
    if (i >= mr) {
      for (int64_t kk = 0; kk < kb; ++kk) ap[kk * kMR + i] = 0.f;
      continue;
    }
    const char* row = a.base + ((i0 + i) * a.row_stride + k0 * a.col_stride) * ea;
    for (int64_t kk = 0; kk < kb; ++kk) {
      ap[kk * kMR + i] = Ld<kBf16>(row + kk * a.col_stride * ea);
    }
  }
}

// Writes the MR x NR register tile back into C (rows < mr, columns < nr).
inline void StoreTile(const float* tile_rows, float* c, int64_t c_rs,
                      int64_t mr, int64_t nr, bool accumulate) {
  for (int64_t i = 0; i < mr; ++i) {
    const float* tile = tile_rows + i * kNR;
    float* row = c + i * c_rs;
    if (accumulate) {
      for (int64_t j = 0; j < nr; ++j) row[j] += tile[j];
    } else {
      for (int64_t j = 0; j < nr; ++j) row[j] = tile[j];
    }
  }
}

#ifdef PALLAS_CPU_BF16_DOT
// bf16 x bf16 with the CPU's bf16 dot-product instruction (vdpbf16ps: one
// f32 lane += a0*b0 + a1*b1 over a pair of consecutive k), twice the
// multiply-adds of an f32 FMA per instruction.  Used for even k and a
// row-major A, whose (k, k+1) pairs are then 32-bit words in place.

inline uint32_t Ld16(const char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}

// B[k0:k0+kb, :] (kb even) as NR-wide panels of k pairs: word (q, j) holds
// B[k0+2q, j] in its low half and B[k0+2q+1, j] in its high half.
void PackBPairs(const Matrix& b, int64_t k0, int64_t kb, int64_t n,
                uint32_t* bp) {
  const int64_t n_panels = (n + kNR - 1) / kNR;
  for (int64_t p = 0; p < n_panels; ++p) {
    uint32_t* dst = bp + p * (kKC / 2) * kNR;
    const bool full = (p + 1) * kNR <= n;
    for (int64_t q = 0; q < kb / 2; ++q) {
      const char* r0 = b.base + (k0 + 2 * q) * b.row_stride * 2;
      const char* r1 = r0 + b.row_stride * 2;
      uint32_t* out = dst + q * kNR;
      if (full && b.col_stride == 1) {
        const char* s0 = r0 + p * kNR * 2;
        const char* s1 = r1 + p * kNR * 2;
        for (int64_t j = 0; j < kNR; ++j) {
          out[j] = Ld16(s0 + 2 * j) | (Ld16(s1 + 2 * j) << 16);
        }
      } else {
        for (int64_t j = 0; j < kNR; ++j) {
          const int64_t col = p * kNR + j;
          const int64_t at = col * b.col_stride * 2;
          out[j] = col < n ? (Ld16(r0 + at) | (Ld16(r1 + at) << 16)) : 0u;
        }
      }
    }
  }
}

// C[0:mr, 0:nr] (+)= A (mr x kb, rows at a + a_off[i], unit k stride) .
// the pair panel bp.
inline void MicroKernelBf16(const char* a, const int64_t* a_off,
                            const uint32_t* bp, int64_t kb, float* c,
                            int64_t c_rs, int64_t mr, int64_t nr,
                            bool accumulate) {
  __m512 acc[kMR][2];
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  int64_t off[kMR];
  for (int i = 0; i < kMR; ++i) off[i] = a_off[i];
  for (int64_t q = 0; q < kb / 2; ++q) {
    const __m512i b0 = _mm512_loadu_si512(bp + q * kNR);
    const __m512i b1 = _mm512_loadu_si512(bp + q * kNR + 16);
    const char* aq = a + q * 4;
    for (int i = 0; i < kMR; ++i) {
      int32_t pair;
      std::memcpy(&pair, aq + off[i], 4);
      const __m512i ai = _mm512_set1_epi32(pair);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)ai, (__m512bh)b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)ai, (__m512bh)b1);
    }
  }
  alignas(64) float tile[kMR * kNR];
  for (int i = 0; i < kMR; ++i) {
    _mm512_store_ps(tile + i * kNR, acc[i][0]);
    _mm512_store_ps(tile + i * kNR + 16, acc[i][1]);
  }
  StoreTile(tile, c, c_rs, mr, nr, accumulate);
}

void MatmulBf16Dot(const Matrix& a, const Matrix& b, float* c, int64_t c_rs,
                   bool accumulate) {
  const int64_t m = a.rows, k = a.cols, n = b.cols;
  const int64_t n_panels = (n + kNR - 1) / kNR;
  thread_local std::vector<uint32_t> bp;
  bp.resize(static_cast<size_t>(n_panels) * (kKC / 2) * kNR);
  for (int64_t k0 = 0; k0 < k; k0 += kKC) {
    const int64_t kb = std::min<int64_t>(kKC, k - k0);
    PackBPairs(b, k0, kb, n, bp.data());
    const bool acc = accumulate || k0 > 0;
    for (int64_t i0 = 0; i0 < m; i0 += kMR) {
      const int64_t mr = std::min<int64_t>(kMR, m - i0);
      const char* a_panel = a.base + (i0 * a.row_stride + k0) * 2;
      int64_t a_off[kMR];
      for (int i = 0; i < kMR; ++i) a_off[i] = (i < mr ? i : 0) * a.row_stride * 2;
      for (int64_t p = 0; p < n_panels; ++p) {
        const int64_t nr = std::min<int64_t>(kNR, n - p * kNR);
        MicroKernelBf16(a_panel, a_off, bp.data() + p * (kKC / 2) * kNR, kb,
                        c + i0 * c_rs + p * kNR, c_rs, mr, nr, acc);
      }
    }
  }
}
#endif  // PALLAS_CPU_BF16_DOT

template <bool kABf16, bool kBBf16>
void Matmul(const Matrix& a, const Matrix& b, float* c, int64_t c_rs,
            bool accumulate) {
  const int64_t m = a.rows, k = a.cols, n = b.cols;
  const int64_t n_panels = (n + kNR - 1) / kNR;
  // Per-thread scratch, reused across calls (a kernel calls this every step).
  thread_local std::vector<float> bp, ap;
  bp.resize(static_cast<size_t>(n_panels) * kKC * kNR);
  ap.resize(static_cast<size_t>(kKC) * kMR);
  if (k == 0 && !accumulate) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * c_rs, c + i * c_rs + n, 0.f);
  }
  for (int64_t k0 = 0; k0 < k; k0 += kKC) {
    const int64_t kb = std::min<int64_t>(kKC, k - k0);
    PackB<kBBf16>(b, k0, kb, n, bp.data());
    const bool acc = accumulate || k0 > 0;
    for (int64_t i0 = 0; i0 < m; i0 += kMR) {
      const int64_t mr = std::min<int64_t>(kMR, m - i0);
      // f32 A is read in place (packing it would be a scalar transpose of
      // every panel, a third of the work for 128-wide blocks); bf16 A is
      // packed, which also converts it.
      const float* a_panel = ap.data();
      int64_t a_off[kMR], a_ks = kMR;
      if constexpr (kABf16) {
        if (a.col_stride == 1) {
          // Rows converted to f32 as they are (a vectorizable widening),
          // then read in place like an f32 block.
          for (int64_t i = 0; i < mr; ++i) {
            const char* row = a.base + ((i0 + i) * a.row_stride + k0) * 2;
            float* out = ap.data() + i * kb;
            for (int64_t kk = 0; kk < kb; ++kk) out[kk] = Ld<true>(row + kk * 2);
          }
          a_ks = 1;
          for (int i = 0; i < kMR; ++i) a_off[i] = (i < mr ? i : 0) * kb;
        } else {
          PackA<kABf16>(a, i0, mr, k0, kb, ap.data());
          for (int i = 0; i < kMR; ++i) a_off[i] = i;
        }
      } else {
        a_panel = reinterpret_cast<const float*>(a.base) +
                  i0 * a.row_stride + k0 * a.col_stride;
        a_ks = a.col_stride;
        for (int i = 0; i < kMR; ++i) a_off[i] = (i < mr ? i : 0) * a.row_stride;
      }
      for (int64_t p = 0; p < n_panels; ++p) {
        const int64_t nr = std::min<int64_t>(kNR, n - p * kNR);
        MicroKernel(a_panel, a_off, a_ks, bp.data() + p * kKC * kNR, kb,
                    c + i0 * c_rs + p * kNR, c_rs, mr, nr, acc);
      }
    }
  }
}

void Matmul(const Matrix& a, bool a_bf16, const Matrix& b, bool b_bf16,
            float* c, int64_t c_rs, bool accumulate) {
#ifdef PALLAS_CPU_BF16_DOT
  if (a_bf16 && b_bf16 && a.col_stride == 1 && a.cols % 2 == 0 && a.cols > 0) {
    MatmulBf16Dot(a, b, c, c_rs, accumulate);
    return;
  }
#endif
  if (a_bf16) {
    b_bf16 ? Matmul<true, true>(a, b, c, c_rs, accumulate)
           : Matmul<true, false>(a, b, c, c_rs, accumulate);
  } else {
    b_bf16 ? Matmul<false, true>(a, b, c, c_rs, accumulate)
           : Matmul<false, false>(a, b, c, c_rs, accumulate);
  }
}

}  // namespace
}  // namespace pallas_cpu

namespace pallas_cpu {
namespace {

void MatmulEntry(PallasCpuRuntimeContext* ctx, int64_t c_s0, int64_t c_s1,
                 bool a_bf16, void* a, int64_t a_off, int64_t a_s0,
                 int64_t a_s1, int64_t a_st0, int64_t a_st1, bool b_bf16,
                 void* b, int64_t b_off, int64_t b_s0, int64_t b_s1,
                 int64_t b_st0, int64_t b_st1, float* c, int64_t c_off,
                 int64_t c_st0, int64_t c_st1, int64_t accumulate) {
  if (a_s1 != b_s0 || c_s0 != a_s0 || c_s1 != b_s1 || (c_s1 > 1 && c_st1 != 1)) {
    // A lowering bug, never the user's: refuse rather than scribble (C's
    // rows are written contiguously).
    std::ostringstream os;
    os << "internal error: matmul of " << a_s0 << "x" << a_s1 << " by " << b_s0
       << "x" << b_s1 << " into " << c_s0 << "x" << c_s1 << " (column stride "
       << c_st1 << ")";
    ctx->Fail(os.str());
    return;
  }
  Matrix ma = FromMemref2D(a, a_off, a_s0, a_s1, a_st0, a_st1, a_bf16 ? 2 : 4);
  Matrix mb = FromMemref2D(b, b_off, b_s0, b_s1, b_st0, b_st1, b_bf16 ? 2 : 4);
  Matmul(ma, a_bf16, mb, b_bf16, c + c_off, c_st0, accumulate != 0);
}

}  // namespace
}  // namespace pallas_cpu

// One symbol per operand element-type pair (each MLIR declaration needs its
// own name, as with the DMA entry points).  Memrefs arrive expanded:
// (allocated, aligned, offset, size0, size1, stride0, stride1).
#define PALLAS_CPU_MATMUL_FOR(A, A_BF16, B, B_BF16)                          \
  extern "C" PALLAS_CPU_EXPORT void pallas_cpu_rt_matmul_##A##_##B(          \
      PallasCpuRuntimeContext* ctx, void* a_alloc, void* a, int64_t a_off,   \
      int64_t a_s0, int64_t a_s1, int64_t a_st0, int64_t a_st1,              \
      void* b_alloc, void* b, int64_t b_off, int64_t b_s0, int64_t b_s1,     \
      int64_t b_st0, int64_t b_st1, float* c_alloc, float* c, int64_t c_off, \
      int64_t c_s0, int64_t c_s1, int64_t c_st0, int64_t c_st1,              \
      int64_t accumulate) {                                                  \
    (void)a_alloc; (void)b_alloc; (void)c_alloc;                             \
    pallas_cpu::MatmulEntry(ctx, c_s0, c_s1, A_BF16, a, a_off, a_s0, a_s1, a_st0, a_st1,      \
                            B_BF16, b, b_off, b_s0, b_s1, b_st0, b_st1, c,   \
                            c_off, c_st0, c_st1, accumulate);                \
  }
PALLAS_CPU_MATMUL_FOR(f32, false, f32, false)
PALLAS_CPU_MATMUL_FOR(bf16, true, bf16, true)
PALLAS_CPU_MATMUL_FOR(f32, false, bf16, true)
PALLAS_CPU_MATMUL_FOR(bf16, true, f32, false)
#undef PALLAS_CPU_MATMUL_FOR
