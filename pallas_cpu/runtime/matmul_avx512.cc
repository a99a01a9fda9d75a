// The AVX-512 matmul kernel (see matmul.h); CMakeLists.txt compiles this
// file with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma, and matmul.cc
// calls it only on CPUs that have them.
//
// f32 (bf16 operands widened to f32 on the way in): B is packed into
// kNR = 64-wide column panels of kKC rows, A is read in place through its
// strides (a broadcast per row and k), and a kMR x kNR = 6 x 64 register
// tile (24 zmm accumulators) runs over each panel, which every row block of
// A passes over in turn.  Sums run over k in order within each kKC = 256
// chunk and are then added to C, f32 FMAs: the order of the AVX2 kernel
// and of the portable kernel built with FMAs (this runtime's kernel before
// the per-ISA split), so f32 results keep their bits (one Sapphire Rapids core:
// 180-195 GFLOP/s for 128^3 and 512^3; kKC = 128, which would keep a panel
// in L1, measured the same).
//
// Without AMX, bf16 x bf16 takes this path too (widening bf16 to f32 is a
// shift): on one Sapphire Rapids core it ran at 162 GFLOP/s for 512^3 and
// 154 for 128^3, where the same tiling with AVX512_BF16's vdpbf16ps (a pair
// of products per lane and instruction) ran at 104 and 107.
#include <immintrin.h>

// GCC 12 warns (-Wmaybe-uninitialized) inside its own AVX-512 headers, on
// the deliberately undefined pass-through of unmasked intrinsics.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "matmul.h"
#include "matmul_avx512_tile.h"

namespace pallas_cpu {
namespace matmul {
namespace {

constexpr int kKC = 256;       // k per panel: 256 x 64 x 4 B = 64 KB (L2)

inline float LoadScalar(const char* p, bool bf16) {
  if (!bf16) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Up to 16 consecutive elements (mask) as f32, zeros elsewhere.
template <bool kBf16>
inline __m512 Load16(const char* p, __mmask16 m) {
  if constexpr (!kBf16) {
    return _mm512_maskz_loadu_ps(m, p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// C[0:MR, 0:nr] (+)= A (MR rows: a + a_off[i], step a_ks per k) . the
// kb x kNR panel bp.
template <int MR>
inline void Kernel(const float* a, const int64_t* a_off, int64_t a_ks,
                   const float* bp, int64_t kb, float* c, int64_t c_rs,
                   int64_t nr, bool accumulate) {
  __m512 acc[MR][kNV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_setzero_ps();
  const float* ar[MR];
  for (int i = 0; i < MR; ++i) ar[i] = a + a_off[i];
  for (int64_t k = 0; k < kb; ++k) {
    __m512 b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = _mm512_load_ps(bp + k * kNR + 16 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(ar[i][k * a_ks]);
      for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, b[v], acc[i][v]);
    }
  }
  StoreTile<MR>(acc, c, c_rs, MR, nr, accumulate);
}

// B[k0:k0+kb, :] as kNR-wide column panels of kKC rows, zero-padded.
template <bool kBf16>
void PackB(const Matrix& b, int64_t k0, int64_t kb, int64_t n, float* bp) {
  constexpr int64_t eb = kBf16 ? 2 : 4;
  const int64_t n_panels = (n + kNR - 1) / kNR;
  if (b.col_stride == 1) {
    for (int64_t p = 0; p < n_panels; ++p) {
      float* dst = bp + p * kKC * kNR;
      for (int64_t kk = 0; kk < kb; ++kk) {
        const char* row = b.base + ((k0 + kk) * b.row_stride + p * kNR) * eb;
        for (int v = 0; v < kNV; ++v) {
          const __mmask16 m = Mask16(n - p * kNR - 16 * v);
          _mm512_store_ps(dst + kk * kNR + 16 * v,
                          Load16<kBf16>(row + 16 * v * eb, m));
        }
      }
    }
    return;
  }
  if (!kBf16 && b.col_stride > 0 && b.col_stride < (int64_t{1} << 26)) {
    // A transposed B (q @ k.T) or any column stride: 16 columns per gather
    // (consecutive k of one column share its cache lines).
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(static_cast<int32_t>(b.col_stride)));
    for (int64_t p = 0; p < n_panels; ++p) {
      float* dst = bp + p * kKC * kNR;
      for (int64_t kk = 0; kk < kb; ++kk) {
        const float* row = reinterpret_cast<const float*>(b.base) +
                           (k0 + kk) * b.row_stride;
        for (int v = 0; v < kNV; ++v) {
          const int64_t col = p * kNR + 16 * v;
          const __mmask16 m = Mask16(n - col);
          _mm512_store_ps(dst + kk * kNR + 16 * v,
                          _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx,
                                                   row + col * b.col_stride, 4));
        }
      }
    }
    return;
  }
  for (int64_t p = 0; p < n_panels; ++p) {
    float* dst = bp + p * kKC * kNR;
    for (int64_t j = 0; j < kNR; ++j) {
      const int64_t col = p * kNR + j;
      for (int64_t kk = 0; kk < kb; ++kk) {
        dst[kk * kNR + j] =
            col < n ? LoadScalar(b.base + ((k0 + kk) * b.row_stride +
                                           col * b.col_stride) * eb, kBf16)
                    : 0.f;
      }
    }
  }
}

// A[0:m, k0:k0+kb] (bf16) widened into m rows of kb f32.
void WidenA(const Matrix& a, int64_t k0, int64_t kb, float* ap) {
  for (int64_t i = 0; i < a.rows; ++i) {
    const char* row = a.base + (i * a.row_stride + k0 * a.col_stride) * 2;
    float* out = ap + i * kb;
    if (a.col_stride == 1) {
      for (int64_t kk = 0; kk < kb; kk += 16) {
        const __mmask16 m = Mask16(kb - kk);
        _mm512_mask_storeu_ps(out + kk, m, Load16<true>(row + kk * 2, m));
      }
    } else {
      for (int64_t kk = 0; kk < kb; ++kk)
        out[kk] = LoadScalar(row + kk * a.col_stride * 2, true);
    }
  }
}

// Rows i0 .. i0+mr of C over one panel, mr <= kMR, one instantiation per
// row count so that a short last block computes no padding rows.
inline void RowBlock(int64_t mr, const float* a, const int64_t* a_off,
                     int64_t a_ks, const float* bp, int64_t kb, float* c,
                     int64_t c_rs, int64_t nr, bool acc) {
  switch (mr) {
    case 6: return Kernel<6>(a, a_off, a_ks, bp, kb, c, c_rs, nr, acc);
    case 5: return Kernel<5>(a, a_off, a_ks, bp, kb, c, c_rs, nr, acc);
    case 4: return Kernel<4>(a, a_off, a_ks, bp, kb, c, c_rs, nr, acc);
    case 3: return Kernel<3>(a, a_off, a_ks, bp, kb, c, c_rs, nr, acc);
    case 2: return Kernel<2>(a, a_off, a_ks, bp, kb, c, c_rs, nr, acc);
    default: return Kernel<1>(a, a_off, a_ks, bp, kb, c, c_rs, nr, acc);
  }
}

template <bool kABf16, bool kBBf16>
bool MatmulF32(const Matrix& a, const Matrix& b, float* c, int64_t c_rs,
               bool accumulate) {
  static_assert(kMR == 6, "RowBlock's cases");
  const int64_t m = a.rows, k = a.cols, n = b.cols;
  const int64_t n_panels = (n + kNR - 1) / kNR;
  thread_local ThreadScratch s;
  float* bp = Scratch<float>(s.b, s.b_cap, n_panels * kKC * kNR);
  float* ap = kABf16 ? Scratch<float>(s.a, s.a_cap, m * kKC) : nullptr;
  if (bp == nullptr || (kABf16 && ap == nullptr)) return false;
  if (k == 0 && !accumulate) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * c_rs, c + i * c_rs + n, 0.f);
  }
  for (int64_t k0 = 0; k0 < k; k0 += kKC) {
    const int64_t kb = std::min<int64_t>(kKC, k - k0);
    PackB<kBBf16>(b, k0, kb, n, bp);
    const bool acc = accumulate || k0 > 0;
    // f32 A is read in place; bf16 A is widened into rows of kb first.
    const float* a_base;
    int64_t a_rs, a_ks;
    if constexpr (kABf16) {
      WidenA(a, k0, kb, ap);
      a_base = ap, a_rs = kb, a_ks = 1;
    } else {
      a_base = reinterpret_cast<const float*>(a.base) + k0 * a.col_stride;
      a_rs = a.row_stride, a_ks = a.col_stride;
    }
    for (int64_t p = 0; p < n_panels; ++p) {
      const int64_t nr = std::min<int64_t>(kNR, n - p * kNR);
      const float* panel = bp + p * kKC * kNR;
      for (int64_t i0 = 0; i0 < m; i0 += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, m - i0);
        int64_t a_off[kMR];
        for (int i = 0; i < kMR; ++i) a_off[i] = (i0 + i) * a_rs;
        RowBlock(mr, a_base, a_off, a_ks, panel, kb, c + i0 * c_rs + p * kNR,
                 c_rs, nr, acc);
      }
    }
  }
  return true;
}


}  // namespace

bool MatmulAvx512(const Matrix& a, bool a_bf16, const Matrix& b, bool b_bf16,
                  float* c, int64_t c_rs, bool accumulate) {
  if (a_bf16) {
    return b_bf16 ? MatmulF32<true, true>(a, b, c, c_rs, accumulate)
                  : MatmulF32<true, false>(a, b, c, c_rs, accumulate);
  }
  return b_bf16 ? MatmulF32<false, true>(a, b, c, c_rs, accumulate)
                : MatmulF32<false, false>(a, b, c, c_rs, accumulate);
}

}  // namespace matmul
}  // namespace pallas_cpu
