// What the AVX-512 matmul kernels share (matmul_avx512.cc, widening bf16
// to f32; matmul_avx512bf16.cc, vdpbf16ps): the register tile's shape,
// per-thread packing scratch, masks and the tile's store into C.
//
// Include only from files compiled with the AVX-512 flags.  Everything is in
// an anonymous namespace: each kernel file gets its own copy, so the linker
// never merges an AVX-512 body into code built for another instruction set.
#ifndef PALLAS_CPU_RUNTIME_MATMUL_AVX512_TILE_H_
#define PALLAS_CPU_RUNTIME_MATMUL_AVX512_TILE_H_

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace pallas_cpu {
namespace matmul {
namespace {

constexpr int kMR = 6;         // rows of the register tile
constexpr int kNV = 4;         // zmm vectors per row of the tile
constexpr int kNR = 16 * kNV;  // columns of the register tile (a B panel)

// Per-thread scratch, 64-byte aligned, reused across calls (a kernel calls a
// matmul every grid step).
template <typename T>
T* Scratch(std::unique_ptr<char, decltype(&std::free)>& buf, size_t& cap,
           size_t count) {
  const size_t bytes = (count * sizeof(T) + 64) / 64 * 64;  // never 0
  if (bytes > cap) {
    buf.reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
    cap = buf ? bytes : 0;
  }
  return reinterpret_cast<T*>(buf.get());
}

struct ThreadScratch {
  std::unique_ptr<char, decltype(&std::free)> b{nullptr, &std::free};
  std::unique_ptr<char, decltype(&std::free)> a{nullptr, &std::free};
  size_t b_cap = 0, a_cap = 0;
};

inline __mmask16 Mask16(int64_t count) {
  if (count <= 0) return 0;
  return count >= 16 ? static_cast<__mmask16>(0xffff)
                     : static_cast<__mmask16>((1u << count) - 1);
}

// Adds (accumulate) or writes the valid part (mr rows, nr columns) of the
// register tile into C.
template <int MR>
inline void StoreTile(const __m512 (&acc)[MR][kNV], float* c, int64_t c_rs,
                      int64_t mr, int64_t nr, bool accumulate) {
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
    float* row = c + i * c_rs;
    for (int v = 0; v < kNV; ++v) {
      const __mmask16 m = Mask16(nr - 16 * v);
      if (!m) break;
      __m512 x = acc[i][v];
      if (accumulate) x = _mm512_add_ps(_mm512_maskz_loadu_ps(m, row + 16 * v), x);
      _mm512_mask_storeu_ps(row + 16 * v, m, x);
    }
  }
}

}  // namespace
}  // namespace matmul
}  // namespace pallas_cpu

#endif  // PALLAS_CPU_RUNTIME_MATMUL_AVX512_TILE_H_
