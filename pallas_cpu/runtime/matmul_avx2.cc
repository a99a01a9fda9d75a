// The AVX2 + FMA matmul kernel (see matmul.h); CMakeLists.txt compiles this
// file with -mavx2 -mfma, and matmul.cc calls it only on CPUs that have both.
//
// The AVX-512 kernel's scheme (matmul_avx512.cc) on 16 ymm registers: B
// packed into kNR = 16-wide column panels of kKC rows (16 KB), A read in
// place through its strides (bf16 A widened to f32 rows first), a kMR x kNR
// = 6 x 16 register tile (12 ymm accumulators, two B vectors, one
// broadcast).  Sums run over k in order within each kKC chunk, f32 FMAs.
// Written with intrinsics: GCC 12 spills the portable kernel's 64-byte
// vector-extension tile to the stack on every k when only AVX2 is enabled
// (2 GFLOP/s on one core for 128^3, against 40 with AVX-512 registers).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "matmul.h"

namespace pallas_cpu {
namespace matmul {
namespace {

constexpr int kMR = 6;   // rows of the register tile
constexpr int kNR = 16;  // columns of the register tile: two ymm
constexpr int kKC = 256; // k per panel: 256 x 16 x 4 B = 16 KB

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

// 8 consecutive elements as f32.
template <bool kBf16>
inline __m256 Load8(const char* p) {
  if constexpr (!kBf16) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// C[0:MR, 0:nr] (+)= A (MR rows: a + a_off[i], step a_ks per k) . the
// kb x kNR panel bp.
template <int MR>
inline void Kernel(const float* a, const int64_t* a_off, int64_t a_ks,
                   const float* bp, int64_t kb, float* c, int64_t c_rs,
                   int64_t nr, bool accumulate) {
  __m256 acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  const float* ar[MR];
  for (int i = 0; i < MR; ++i) ar[i] = a + a_off[i];
  for (int64_t k = 0; k < kb; ++k) {
    const __m256 b0 = _mm256_load_ps(bp + k * kNR);
    const __m256 b1 = _mm256_load_ps(bp + k * kNR + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(ar[i] + k * a_ks);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* row = c + i * c_rs;
    if (nr == kNR) {
      __m256 x0 = acc[i][0], x1 = acc[i][1];
      if (accumulate) {
        x0 = _mm256_add_ps(_mm256_loadu_ps(row), x0);
        x1 = _mm256_add_ps(_mm256_loadu_ps(row + 8), x1);
      }
      _mm256_storeu_ps(row, x0);
      _mm256_storeu_ps(row + 8, x1);
    } else {
      alignas(32) float tile[kNR];
      _mm256_store_ps(tile, acc[i][0]);
      _mm256_store_ps(tile + 8, acc[i][1]);
      for (int64_t j = 0; j < nr; ++j) row[j] = accumulate ? row[j] + tile[j] : tile[j];
    }
  }
}

// B[k0:k0+kb, :] as kNR-wide column panels of kKC rows, zero-padded.
template <bool kBf16>
void PackB(const Matrix& b, int64_t k0, int64_t kb, int64_t n, float* bp) {
  constexpr int64_t eb = kBf16 ? 2 : 4;
  const int64_t n_panels = (n + kNR - 1) / kNR;
  for (int64_t p = 0; p < n_panels; ++p) {
    float* dst = bp + p * kKC * kNR;
    const bool full = (p + 1) * kNR <= n;
    if (full && b.col_stride == 1) {
      for (int64_t kk = 0; kk < kb; ++kk) {
        const char* row = b.base + ((k0 + kk) * b.row_stride + p * kNR) * eb;
        _mm256_store_ps(dst + kk * kNR, Load8<kBf16>(row));
        _mm256_store_ps(dst + kk * kNR + 8, Load8<kBf16>(row + 8 * eb));
      }
      continue;
    }
    // A transposed B (q @ k.T), strided or edge panel: column by column,
    // reads streaming along k when the column is contiguous.
    for (int64_t j = 0; j < kNR; ++j) {
      const int64_t col = p * kNR + j;
      const char* src = b.base + (k0 * b.row_stride + col * b.col_stride) * eb;
      for (int64_t kk = 0; kk < kb; ++kk) {
        dst[kk * kNR + j] =
            col < n ? LoadScalar(src + kk * b.row_stride * eb, kBf16) : 0.f;
      }
    }
  }
}

// A[0:m, k0:k0+kb] (bf16) widened into m rows of kb f32.
void WidenA(const Matrix& a, int64_t k0, int64_t kb, float* ap) {
  for (int64_t i = 0; i < a.rows; ++i) {
    const char* row = a.base + (i * a.row_stride + k0 * a.col_stride) * 2;
    float* out = ap + i * kb;
    int64_t kk = 0;
    if (a.col_stride == 1) {
      for (; kk + 8 <= kb; kk += 8) _mm256_storeu_ps(out + kk, Load8<true>(row + kk * 2));
    }
    for (; kk < kb; ++kk) out[kk] = LoadScalar(row + kk * a.col_stride * 2, true);
  }
}

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

// 64-byte aligned f32 scratch, null when out of memory.  No std::vector
// here: its out-of-line members would be compiled with this file's AVX2
// flags as weak symbols the linker may pick for baseline-ISA callers too.
struct Scratch {
  std::unique_ptr<char, decltype(&std::free)> p{nullptr, &std::free};
  size_t cap = 0;
  float* Get(size_t count) {
    const size_t bytes = (count * sizeof(float) + 64) / 64 * 64;  // never 0
    if (bytes > cap) {
      p.reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
      cap = p ? bytes : 0;
    }
    return reinterpret_cast<float*>(p.get());
  }
};

template <bool kABf16, bool kBBf16>
bool MatmulF32(const Matrix& a, const Matrix& b, float* c, int64_t c_rs,
               bool accumulate) {
  static_assert(kMR == 6, "RowBlock's cases");
  const int64_t m = a.rows, k = a.cols, n = b.cols;
  const int64_t n_panels = (n + kNR - 1) / kNR;
  thread_local Scratch b_buf, a_buf;
  float* bp = b_buf.Get(n_panels * kKC * kNR);
  float* ap = kABf16 ? a_buf.Get(m * kKC) : nullptr;
  if (bp == nullptr || (kABf16 && ap == nullptr)) return false;
  if (k == 0 && !accumulate) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * c_rs, c + i * c_rs + n, 0.f);
  }
  for (int64_t k0 = 0; k0 < k; k0 += kKC) {
    const int64_t kb = std::min<int64_t>(kKC, k - k0);
    PackB<kBBf16>(b, k0, kb, n, bp);
    const bool acc = accumulate || k0 > 0;
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

bool MatmulAvx2(const Matrix& a, bool a_bf16, const Matrix& b, bool b_bf16,
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
