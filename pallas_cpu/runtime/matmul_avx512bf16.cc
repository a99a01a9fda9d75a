// The AVX512_BF16 matmul kernel for bf16 x bf16 (see matmul.h);
// CMakeLists.txt compiles this file with -mavx512bf16 and the AVX-512 set,
// and matmul.cc calls it only on CPUs where vdpbf16ps is the fast way:
// AMD Zen 4 and later, which run it at the rate of an f32 FMA for twice the
// products (one Zen 5 core: XLA's bf16 dot ran at twice the speed of the
// widen-to-f32 kernel, matmul_avx512.cc).  Intel cores without AMX run
// vdpbf16ps slower than that kernel (Sapphire Rapids: 104 against 162
// GFLOP/s) and keep it.
//
// The tiling is the AVX-512 kernel's (matmul_avx512_tile.h), on pairs of k: A and B are packed as
// one dword per pair (element k in the low half, k + 1 in the high half,
// zero past the end), B into kNR = 64-wide column panels of kKC / 2 pair
// rows, and a kMR x kNR = 6 x 64 register tile runs over each panel with
// vdpbf16ps (per lane: acc += a[k+1] * b[k+1] + a[k] * b[k]).  Products of
// bf16 are exact in f32; as in AMX's tdpbf16ps, the instruction treats
// denormal inputs as zero and flushes denormal sums, and k pairs add in its
// own order, so results agree with the f32 kernels to rounding.
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

constexpr int kKC = 512;       // k per panel: 256 pairs x 64 x 4 B = 64 KB
constexpr int kQC = kKC / 2;   // pair rows per panel

inline uint32_t Bits(const char* base, int64_t index) {
  uint16_t h;
  std::memcpy(&h, base + index * 2, 2);
  return h;
}

// C[0:MR, 0:nr] (+)= the MR packed rows of A (a_rs dwords apart) . the
// kq-pair panel bp.
template <int MR>
inline void Kernel(const uint32_t* ap, int64_t a_rs, const uint32_t* bp,
                   int64_t kq, float* c, int64_t c_rs, int64_t nr,
                   bool accumulate) {
  __m512 acc[MR][kNV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t q = 0; q < kq; ++q) {
    __m512bh b[kNV];
    for (int v = 0; v < kNV; ++v) {
      b[v] = (__m512bh)_mm512_load_si512(bp + q * kNR + 16 * v);
    }
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(
          static_cast<int>(ap[i * a_rs + q]));
      for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, b[v]);
    }
  }
  StoreTile<MR>(acc, c, c_rs, MR, nr, accumulate);
}

// B[k0:k0+kb, :] as kNR-wide column panels of kQC pair rows, zero-padded.
void PackB(const Matrix& b, int64_t k0, int64_t kb, int64_t n, uint32_t* bp) {
  const int64_t n_panels = (n + kNR - 1) / kNR;
  const int64_t kq = (kb + 1) / 2;
  for (int64_t p = 0; p < n_panels; ++p) {
    uint32_t* dst = bp + p * kQC * kNR;
    for (int64_t q = 0; q < kq; ++q) {
      const int64_t k = k0 + 2 * q;
      const bool pair = 2 * q + 1 < kb;
      if (b.col_stride == 1) {
        const char* lo_row = b.base + (k * b.row_stride + p * kNR) * 2;
        const char* hi_row = lo_row + b.row_stride * 2;
        for (int v = 0; v < kNV; ++v) {
          const __mmask16 m = Mask16(n - p * kNR - 16 * v);
          const __m512i lo = _mm512_cvtepu16_epi32(
              _mm256_maskz_loadu_epi16(m, lo_row + 32 * v));
          const __m512i hi = pair ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                                        m, hi_row + 32 * v))
                                  : _mm512_setzero_si512();
          _mm512_store_si512(dst + q * kNR + 16 * v,
                             _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
        continue;
      }
      for (int64_t j = 0; j < kNR; ++j) {
        const int64_t col = p * kNR + j;
        uint32_t w = 0;
        if (col < n) {
          w = Bits(b.base, k * b.row_stride + col * b.col_stride);
          if (pair) w |= Bits(b.base, (k + 1) * b.row_stride + col * b.col_stride) << 16;
        }
        dst[q * kNR + j] = w;
      }
    }
  }
}

// A[0:m, k0:k0+kb] as m rows of kq pair dwords (a zero high half past kb).
void PackA(const Matrix& a, int64_t k0, int64_t kb, uint32_t* ap, int64_t kq) {
  for (int64_t i = 0; i < a.rows; ++i) {
    uint32_t* out = ap + i * kq;
    const int64_t start = i * a.row_stride + k0 * a.col_stride;
    if (a.col_stride == 1) {
      // Consecutive k are consecutive halves: the row's bytes are the pairs.
      std::memcpy(out, a.base + start * 2, (kb / 2) * 4);
      if (kb % 2) out[kq - 1] = Bits(a.base, start + kb - 1);
      continue;
    }
    for (int64_t q = 0; q < kq; ++q) {
      uint32_t w = Bits(a.base, start + 2 * q * a.col_stride);
      if (2 * q + 1 < kb) w |= Bits(a.base, start + (2 * q + 1) * a.col_stride) << 16;
      out[q] = w;
    }
  }
}

inline void RowBlock(int64_t mr, const uint32_t* ap, int64_t a_rs,
                     const uint32_t* bp, int64_t kq, float* c, int64_t c_rs,
                     int64_t nr, bool acc) {
  switch (mr) {
    case 6: return Kernel<6>(ap, a_rs, bp, kq, c, c_rs, nr, acc);
    case 5: return Kernel<5>(ap, a_rs, bp, kq, c, c_rs, nr, acc);
    case 4: return Kernel<4>(ap, a_rs, bp, kq, c, c_rs, nr, acc);
    case 3: return Kernel<3>(ap, a_rs, bp, kq, c, c_rs, nr, acc);
    case 2: return Kernel<2>(ap, a_rs, bp, kq, c, c_rs, nr, acc);
    default: return Kernel<1>(ap, a_rs, bp, kq, c, c_rs, nr, acc);
  }
}

}  // namespace

bool MatmulAvx512Bf16(const Matrix& a, const Matrix& b, float* c,
                      int64_t c_rs, bool accumulate) {
  static_assert(kMR == 6, "RowBlock's cases");
  const int64_t m = a.rows, k = a.cols, n = b.cols;
  const int64_t n_panels = (n + kNR - 1) / kNR;
  thread_local ThreadScratch s;
  uint32_t* bp = Scratch<uint32_t>(s.b, s.b_cap, n_panels * kQC * kNR);
  uint32_t* ap = Scratch<uint32_t>(s.a, s.a_cap, m * kQC);
  if (bp == nullptr || ap == nullptr) return false;
  if (k == 0 && !accumulate) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * c_rs, c + i * c_rs + n, 0.f);
  }
  for (int64_t k0 = 0; k0 < k; k0 += kKC) {
    const int64_t kb = std::min<int64_t>(kKC, k - k0);
    const int64_t kq = (kb + 1) / 2;
    PackB(b, k0, kb, n, bp);
    PackA(a, k0, kb, ap, kq);
    const bool acc = accumulate || k0 > 0;
    for (int64_t p = 0; p < n_panels; ++p) {
      const int64_t nr = std::min<int64_t>(kNR, n - p * kNR);
      const uint32_t* panel = bp + p * kQC * kNR;
      for (int64_t i0 = 0; i0 < m; i0 += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, m - i0);
        RowBlock(mr, ap + i0 * kq, kq, panel, kq, c + i0 * c_rs + p * kNR,
                 c_rs, nr, acc);
      }
    }
  }
  return true;
}

}  // namespace matmul
}  // namespace pallas_cpu
