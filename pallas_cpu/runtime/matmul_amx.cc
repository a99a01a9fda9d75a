// bf16 x bf16 -> f32 matmul on AMX tiles (see matmul.h); CMakeLists.txt
// compiles this file with -mamx-tile -mamx-bf16 -mavx512f -mavx512bw
// -mavx512vl, and matmul.cc calls it only on CPUs with AMX-BF16 once the
// kernel has granted this process the tile state.
//
// Linux keeps AMX's 8 KB tile state off until a process asks for it
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); the request fails on
// kernels without AMX support or when a thread's signal stack is too small
// for the larger signal frame, and then AMX is never used (the AVX-512
// kernels run instead).
//
// Layout: B is packed into 16-column panels of k pairs ("VNNI" order: row q
// of a panel holds, per column, B[2q, j] in the low and B[2q+1, j] in the
// high half of a 32-bit word; a transposed B through 16 x 16 word
// transposes), zero-padded to whole tiles.  A row-major A in whole tiles is
// loaded in place, any other A packed into zero-padded 16 x 32 tiles.  A
// 32 x 32 block of C lives in four accumulator tiles; each
// step of 32 k loads two A tiles and two B tiles and issues four tdpbf16ps
// (16 x 16 x 32 multiply-adds each, f32 sums).  C's block is loaded into the
// accumulators (accumulate) or zeroed, and stored back once.  tdpbf16ps
// treats bf16 denormals as zero, as vdpbf16ps does.
#include <immintrin.h>

// GCC 12 warns (-Wmaybe-uninitialized) inside its own AVX-512 headers, on
// the deliberately undefined pass-through of unmasked intrinsics.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "matmul.h"

namespace pallas_cpu {
namespace matmul {
namespace {

constexpr int kArchGetXcompPerm = 0x1022;
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

constexpr int kT = 16;    // tile rows; f32 columns of a C tile; pairs of a B tile
constexpr int kTK = 32;   // bf16 k per A tile row (64 bytes)

// The tile configuration (palette 1): tiles 0-3 accumulate C, 4-5 hold A,
// 6-7 hold B; every tile is 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

const TileConfig& Config() {
  static const TileConfig cfg = [] {
    TileConfig t;
    std::memset(&t, 0, sizeof(t));
    t.palette_id = 1;
    for (int i = 0; i < 8; ++i) {
      t.colsb[i] = 64;
      t.rows[i] = kT;
    }
    return t;
  }();
  return cfg;
}

struct Buffer {
  std::unique_ptr<char, decltype(&std::free)> p{nullptr, &std::free};
  size_t cap = 0;
  template <typename T>
  T* Get(size_t count) {
    const size_t bytes = (count * sizeof(T) + 64) / 64 * 64;  // never 0
    if (bytes > cap) {
      p.reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
      cap = p ? bytes : 0;
    }
    return reinterpret_cast<T*>(p.get());
  }
};

inline __mmask32 Mask32(int64_t count) {
  if (count <= 0) return 0;
  return count >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << count) - 1);
}

inline __mmask16 Mask16(int64_t count) {
  if (count <= 0) return 0;
  return count >= 16 ? static_cast<__mmask16>(0xffff)
                     : static_cast<__mmask16>((1u << count) - 1);
}

inline uint16_t Ld16(const char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}

// A[0:m, 0:k] as tiles: tile (r, t) = rows 16r.., k 32t.., 1 KB each,
// row-major inside, zero-padded to mt x kt tiles.
void PackA(const Matrix& a, int64_t mt, int64_t kt, uint16_t* ap) {
  for (int64_t r = 0; r < mt; ++r) {
    for (int64_t i = 0; i < kT; ++i) {
      const int64_t row = r * kT + i;
      for (int64_t t = 0; t < kt; ++t) {
        uint16_t* dst = ap + ((r * kt + t) * kT + i) * kTK;
        if (row >= a.rows) {
          _mm512_store_si512(dst, _mm512_setzero_si512());
          continue;
        }
        const char* src = a.base + (row * a.row_stride + t * kTK * a.col_stride) * 2;
        const int64_t left = a.cols - t * kTK;
        if (a.col_stride == 1) {
          _mm512_store_si512(dst, _mm512_maskz_loadu_epi16(Mask32(left), src));
        } else {
          for (int64_t kk = 0; kk < kTK; ++kk)
            dst[kk] = kk < left ? Ld16(src + kk * a.col_stride * 2) : 0;
        }
      }
    }
  }
}

// r[i][j] <- r[j][i] for 32-bit lanes.
inline void Transpose16x16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Each 128-bit lane now holds a 4 x 4 block in place; move the blocks.
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// B[0:k, 0:n] as 16-column panels of kt * 16 pair rows: word (p, q, j) =
// B[2q, 16p + j] | B[2q + 1, 16p + j] << 16, zero-padded.
void PackB(const Matrix& b, int64_t nt, int64_t kt, uint32_t* bp) {
  const int64_t k = b.rows, n = b.cols, nq = kt * kT;
  if (b.col_stride == 1) {
    // Row pair by row pair, each pair read along its rows (streams; a panel
    // at a time would read 32 bytes of every row per panel).
    const __m256i zero = _mm256_setzero_si256();
    for (int64_t q = 0; q < nq; ++q) {
      const int64_t k0 = 2 * q;
      const char* r0 = b.base + k0 * b.row_stride * 2;
      const char* r1 = r0 + b.row_stride * 2;
      for (int64_t p = 0; p < nt; ++p) {
        const __mmask16 m = Mask16(n - p * kT);
        const __m256i lo = k0 < k ? _mm256_maskz_loadu_epi16(m, r0 + p * kT * 2) : zero;
        const __m256i hi = k0 + 1 < k ? _mm256_maskz_loadu_epi16(m, r1 + p * kT * 2) : zero;
        _mm512_store_si512(bp + (p * nq + q) * kT,
                           _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16)));
      }
    }
    return;
  }
  if (b.row_stride == 1) {
    // A transposed B (q @ k.T): column j's k pairs are words in place; 16
    // words of 16 columns are loaded and transposed.
    for (int64_t p = 0; p < nt; ++p) {
      for (int64_t q0 = 0; q0 < nq; q0 += kT) {
        __m512i r[16];
        const __mmask32 m = Mask32(k - 2 * q0);
        for (int j = 0; j < 16; ++j) {
          const int64_t col = p * kT + j;
          r[j] = col < n ? _mm512_maskz_loadu_epi16(
                               m, b.base + (col * b.col_stride + 2 * q0) * 2)
                         : _mm512_setzero_si512();
        }
        Transpose16x16(r);
        for (int i = 0; i < 16; ++i)
          _mm512_store_si512(bp + (p * nq + q0 + i) * kT, r[i]);
      }
    }
    return;
  }
  for (int64_t p = 0; p < nt; ++p) {
    uint32_t* panel = bp + p * nq * kT;
    const int64_t col0 = p * kT;
    // Any other strides: element by element.
    for (int64_t j = 0; j < kT; ++j) {
      const int64_t col = col0 + j;
      const char* src = b.base + col * b.col_stride * 2;
      for (int64_t q = 0; q < nq; ++q) {
        const int64_t k0 = 2 * q;
        uint32_t w = 0;
        if (col < n && k0 < k) {
          w = Ld16(src + k0 * b.row_stride * 2);
          if (k0 + 1 < k)
            w |= static_cast<uint32_t>(Ld16(src + (k0 + 1) * b.row_stride * 2)) << 16;
        }
        panel[q * kT + j] = w;
      }
    }
  }
}

}  // namespace

bool AmxEnable() {
  static const bool enabled = [] {
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
      return false;
    unsigned long features = 0;
    if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &features) != 0) return false;
    return (features >> kXfeatureXtiledata & 1) != 0;
  }();
  return enabled;
}

bool MatmulAmxBf16(const Matrix& a, const Matrix& b, float* c, int64_t c_rs,
                   bool accumulate) {
  const int64_t m = a.rows, k = a.cols, n = b.cols;
  if (m == 0 || n == 0) return true;
  if (k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * c_rs, c + i * c_rs + n, 0.f);
    return true;
  }
  // Whole 32 x 32 blocks of C: A's row tiles and B's panels in pairs.
  const int64_t mt = (m + 2 * kT - 1) / (2 * kT) * 2;
  const int64_t nt = (n + 2 * kT - 1) / (2 * kT) * 2;
  const int64_t kt = (k + kTK - 1) / kTK;
  thread_local Buffer a_buf, b_buf, c_buf;
  // A row-major in whole tiles is loaded in place (its rows, 64 bytes per
  // tile row, a row stride apart); otherwise packed, zero-padded.
  const bool a_in_place = a.col_stride == 1 && m % (2 * kT) == 0 && k % kTK == 0;
  uint16_t* ap = a_in_place ? nullptr : a_buf.Get<uint16_t>(mt * kt * kT * kTK);
  uint32_t* bp = b_buf.Get<uint32_t>(nt * kt * kT * kT);
  float* edge = c_buf.Get<float>(2 * kT * 2 * kT);
  if ((!a_in_place && ap == nullptr) || bp == nullptr || edge == nullptr) return false;
  if (!a_in_place) PackA(a, mt, kt, ap);
  PackB(b, nt, kt, bp);

  // The thread's tile configuration as found (another AMX user on this
  // thread, such as a oneDNN kernel of XLA's, may count on it), restored on
  // exit; tile data is never kept across calls.
  TileConfig saved;
  _tile_storeconfig(&saved);
  _tile_loadconfig(&Config());
  // Tile t of A's row block r: a_rows[r] + t * a_step, rows a_stride bytes
  // apart.
  const int64_t a_step = a_in_place ? kTK : kT * kTK;   // uint16
  const int64_t a_stride = a_in_place ? a.row_stride * 2 : kTK * 2;
  const int64_t a_block = a_in_place ? kT * a.row_stride : kt * kT * kTK;
  const int64_t b_panel = kt * kT * kT;   // uint32 per B panel
  for (int64_t r = 0; r < mt; r += 2) {
    const uint16_t* a0 =
        (a_in_place ? reinterpret_cast<const uint16_t*>(a.base) : ap) + r * a_block;
    const uint16_t* a1 = a0 + a_block;
    for (int64_t p = 0; p < nt; p += 2) {
      const uint32_t* b0 = bp + p * b_panel;
      const uint32_t* b1 = b0 + b_panel;
      const int64_t i0 = r * kT, j0 = p * kT;
      const bool whole = i0 + 2 * kT <= m && j0 + 2 * kT <= n;
      // The accumulators start from C (accumulate) or zero; a block that
      // crosses C's edge goes through a 32 x 32 buffer.
      float* cb = whole ? c + i0 * c_rs + j0 : edge;
      const int64_t cs = whole ? c_rs * 4 : 2 * kT * 4;
      const int64_t mr = std::min<int64_t>(2 * kT, m - i0);
      const int64_t nr = std::min<int64_t>(2 * kT, n - j0);
      if (!whole) {
        for (int64_t i = 0; i < 2 * kT; ++i) {
          for (int64_t h = 0; h < 2; ++h) {
            const __mmask16 msk = i < mr ? Mask16(nr - h * kT) : 0;
            _mm512_store_ps(edge + i * 2 * kT + h * kT,
                            accumulate ? _mm512_maskz_loadu_ps(
                                             msk, c + (i0 + i) * c_rs + j0 + h * kT)
                                       : _mm512_setzero_ps());
          }
        }
      }
      if (accumulate || !whole) {
        _tile_loadd(0, cb, cs);
        _tile_loadd(1, cb + kT, cs);
        _tile_loadd(2, reinterpret_cast<char*>(cb) + kT * cs, cs);
        _tile_loadd(3, reinterpret_cast<char*>(cb) + kT * cs + kT * 4, cs);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t t = 0; t < kt; ++t) {
        _tile_loadd(4, a0 + t * a_step, a_stride);
        _tile_loadd(5, a1 + t * a_step, a_stride);
        _tile_loadd(6, b0 + t * kT * kT, kT * 4);
        _tile_loadd(7, b1 + t * kT * kT, kT * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, cb, cs);
      _tile_stored(1, cb + kT, cs);
      _tile_stored(2, reinterpret_cast<char*>(cb) + kT * cs, cs);
      _tile_stored(3, reinterpret_cast<char*>(cb) + kT * cs + kT * 4, cs);
      if (!whole) {
        for (int64_t i = 0; i < mr; ++i) {
          for (int64_t h = 0; h < 2; ++h) {
            const __mmask16 msk = Mask16(nr - h * kT);
            _mm512_mask_storeu_ps(c + (i0 + i) * c_rs + j0 + h * kT, msk,
                                  _mm512_load_ps(edge + i * 2 * kT + h * kT));
          }
        }
      }
    }
  }
  if (saved.palette_id == 0) {
    _tile_release();  // unconfigured before: back to the init state
  } else {
    _tile_loadconfig(&saved);
  }
  return true;
}

}  // namespace matmul
}  // namespace pallas_cpu
