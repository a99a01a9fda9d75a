// pallas_cpu_rt_matmul_<A>_<B>: dot_general's matrix products (f32 and
// bf16 operands, f32 accumulation), C (+)= A @ B on strided 2-D windows.
//
// The kernel is chosen at run time from the CPU's features (matmul.h): AMX
// tiles for bf16 x bf16 (when the OS grants them), AVX512_BF16's vdpbf16ps
// for bf16 x bf16 on AMD cores (where it outruns widening to f32),
// AVX-512, AVX2 + FMA, or the portable kernel for the baseline ISA.  This file is compiled for the
// baseline ISA, so the runtime loads on any x86-64 (or other) CPU, whatever
// machine built it.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <sstream>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "abi.h"
#include "matmul.h"
#include "runtime_context.h"

#define PALLAS_CPU_MATMUL_GENERIC_NS baseline
#define PALLAS_CPU_MATMUL_GENERIC_FN MatmulBaseline
#include "matmul_generic.inc"

namespace pallas_cpu {
namespace matmul {
namespace {

// Kernel levels, each usable only when the ones below it are.
enum Level : int64_t {
  kBaseline = 0,
  kAvx2 = 1,        // AVX2 + FMA
  kAvx512 = 2,      // AVX-512 F/BW/VL/DQ
  kAvx512Bf16 = 3,  // + vdpbf16ps for bf16 x bf16 (detected on AMD only)
  kAmx = 4,         // + AMX tiles for bf16 x bf16
};

#if defined(__x86_64__) || defined(__i386__)
bool CpuidBit(unsigned leaf, unsigned sub, int reg, int bit) {
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(leaf, sub, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit & 1) != 0;
}
#endif

// The best level this CPU, OS and build support (AMX: asks the OS for the
// tile state, once).
int64_t DetectLevel() {
  int64_t level = kBaseline;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
#ifdef PALLAS_CPU_MATMUL_AVX2
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
    return level;
  level = kAvx2;
#endif
#ifdef PALLAS_CPU_MATMUL_AVX512
  // __builtin_cpu_supports checks that the OS saves the zmm state (XCR0).
  if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma")))
    return level;
  level = kAvx512;
#endif
#ifdef PALLAS_CPU_MATMUL_AVX512BF16
  // CPUID.(7,1):EAX[5] AVX512_BF16.  Only AMD's cores run vdpbf16ps faster
  // than the widening kernel (matmul_avx512bf16.cc); an Intel core that
  // has AMX gets this level too (AMX is above it), so that capped below
  // AMX it runs this kernel.
  unsigned vendor[4] = {0, 0, 0, 0};
  __get_cpuid(0, &vendor[0], &vendor[1], &vendor[2], &vendor[3]);
  const bool amd = vendor[1] == 0x68747541;  // "Auth"enticAMD
  const bool amx = CpuidBit(7, 0, 3, 22) && CpuidBit(7, 0, 3, 24);
  if (CpuidBit(7, 1, 0, 5) && (amd || amx)) level = kAvx512Bf16;
#endif
#ifdef PALLAS_CPU_MATMUL_AMX
  // CPUID.(7,0):EDX[22] AMX-BF16, [24] AMX-TILE; AMX builds on the AVX-512
  // kernels (their packing instructions).
  if (level >= kAvx512 && CpuidBit(7, 0, 3, 22) && CpuidBit(7, 0, 3, 24) &&
      AmxEnable())
    level = kAmx;
#endif
#ifdef PALLAS_CPU_MATMUL_AVX512BF16
  // An Intel core whose OS refused the AMX state keeps the widening kernel.
  if (level == kAvx512Bf16 && !amd) level = kAvx512;
#endif
#endif
  return level;
}

int64_t BestLevel() {
  static const int64_t best = DetectLevel();
  return best;
}

// At most this level is used (pallas_cpu_rt_matmul_kernel: tests run the
// lower kernels on a machine that has the higher ones).
std::atomic<int64_t> level_cap{kAmx};

// False: the kernel could not allocate its scratch (C untouched).
bool Matmul(const Matrix& a, bool a_bf16, const Matrix& b, bool b_bf16,
            float* c, int64_t c_rs, bool accumulate) {
  const int64_t level =
      std::min(BestLevel(), level_cap.load(std::memory_order_relaxed));
#ifdef PALLAS_CPU_MATMUL_AMX
  if (level >= kAmx && a_bf16 && b_bf16) {
    return MatmulAmxBf16(a, b, c, c_rs, accumulate);
  }
#endif
#ifdef PALLAS_CPU_MATMUL_AVX512BF16
  if (level >= kAvx512Bf16 && a_bf16 && b_bf16) {
    return MatmulAvx512Bf16(a, b, c, c_rs, accumulate);
  }
#endif
#ifdef PALLAS_CPU_MATMUL_AVX512
  if (level >= kAvx512) {
    return MatmulAvx512(a, a_bf16, b, b_bf16, c, c_rs, accumulate);
  }
#endif
#ifdef PALLAS_CPU_MATMUL_AVX2
  if (level >= kAvx2) {
    return MatmulAvx2(a, a_bf16, b, b_bf16, c, c_rs, accumulate);
  }
#endif
  (void)level;
  return MatmulBaseline(a, a_bf16, b, b_bf16, c, c_rs, accumulate);
}

Matrix FromMemref2D(void* aligned, int64_t offset, int64_t s0, int64_t s1,
                    int64_t st0, int64_t st1, int64_t elem_bytes) {
  return Matrix{static_cast<char*>(aligned) + offset * elem_bytes, s0, s1, st0,
                st1};
}

}  // namespace
}  // namespace matmul

namespace {

using matmul::FromMemref2D;
using matmul::Matrix;

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
  if (!matmul::Matmul(ma, a_bf16, mb, b_bf16, c + c_off, c_st0,
                      accumulate != 0)) {
    std::ostringstream os;
    os << "matmul of " << a_s0 << "x" << a_s1 << " by " << b_s0 << "x" << b_s1
       << ": out of memory for its packing scratch";
    ctx->Fail(os.str());
  }
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

extern "C" PALLAS_CPU_EXPORT int64_t pallas_cpu_rt_matmul_kernel(int64_t cap) {
  using namespace pallas_cpu::matmul;
  if (cap >= 0) level_cap.store(cap, std::memory_order_relaxed);
  return std::min(BestLevel(), level_cap.load(std::memory_order_relaxed));
}
