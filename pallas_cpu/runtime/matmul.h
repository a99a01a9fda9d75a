// The matmul microkernels behind pallas_cpu_rt_matmul_<A>_<B> (matmul.cc),
// one translation unit per instruction set, each compiled with its own flags
// (CMakeLists.txt) and chosen at run time from the CPU's features (cpuid),
// so that one build of the runtime runs on any x86-64 machine that shares
// the tree (and uses what the machine it runs on has):
//
//   matmul_amx.cc     bf16 x bf16 on AMX tiles (tdpbf16ps), when the kernel
//                     grants the tile state (arch_prctl) -- Sapphire Rapids+
//   matmul_avx512.cc  f32 and bf16 (widened to f32) on AVX-512 registers
//   matmul_avx2.cc    the same on AVX2 + FMA registers
//   matmul_generic.inc  the portable register-tiled kernel (GCC vector
//                     extensions) for the baseline ISA (matmul.cc)
//
// An ISA file must not define anything the linker could merge with another
// file's copy (inline functions or templates with external linkage, such as
// std::vector's out-of-line members): the merged copy, built with that
// file's flags, could run on a CPU without them.  Helpers live in anonymous
// namespaces; scratch is aligned_alloc'd.
//
// Every kernel computes C (+)= A @ B with f32 accumulation: products of bf16
// values are exact in f32, the sums run in f32.  Each returns false, leaving
// C as it was, when it could not allocate its (per-thread) packing scratch.
#ifndef PALLAS_CPU_RUNTIME_MATMUL_H_
#define PALLAS_CPU_RUNTIME_MATMUL_H_

#include <cstdint>

namespace pallas_cpu {
namespace matmul {

// A strided 2-D window of f32 or bf16 elements.
struct Matrix {
  char* base;
  int64_t rows, cols;
  int64_t row_stride, col_stride;  // in elements
};

// The kernels: C[0:a.rows, 0:b.cols] (+)= A @ B; C's rows are contiguous,
// c_rs apart; a_bf16/b_bf16: the operands' element types (f32 otherwise).

// Always available: the portable kernel for the baseline ISA.
bool MatmulBaseline(const Matrix& a, bool a_bf16, const Matrix& b,
                    bool b_bf16, float* c, int64_t c_rs, bool accumulate);

#ifdef PALLAS_CPU_MATMUL_AVX2
// AVX2 + FMA.
bool MatmulAvx2(const Matrix& a, bool a_bf16, const Matrix& b, bool b_bf16,
                float* c, int64_t c_rs, bool accumulate);
#endif

#ifdef PALLAS_CPU_MATMUL_AVX512
// AVX-512 F/BW/VL/DQ.
bool MatmulAvx512(const Matrix& a, bool a_bf16, const Matrix& b, bool b_bf16,
                  float* c, int64_t c_rs, bool accumulate);
#endif

#ifdef PALLAS_CPU_MATMUL_AVX512BF16
bool MatmulAvx512Bf16(const Matrix& a, const Matrix& b, float* c,
                      int64_t c_rs, bool accumulate);
#endif

#ifdef PALLAS_CPU_MATMUL_AMX
// Asks the OS for the AMX tile state (once per process); false when the
// kernel refuses it (older kernels, a too-small signal stack) -- then AMX
// must not be used.
bool AmxEnable();
// bf16 x bf16 on AMX tiles (any strides); needs AmxEnable().  Loads its tile configuration on entry and restores the calling
// thread's on exit (releases the tiles when they were unconfigured).
bool MatmulAmxBf16(const Matrix& a, const Matrix& b, float* c, int64_t c_rs,
                   bool accumulate);
#endif

}  // namespace matmul
}  // namespace pallas_cpu

#endif  // PALLAS_CPU_RUNTIME_MATMUL_H_

// Testing hook: use at most kernel level `cap` (0 baseline, 1 AVX2, 2
// AVX-512, 3 AMX; a negative cap leaves it as it is) and return the level
// now in use on this machine.
extern "C" __attribute__((visibility("default"))) int64_t
pallas_cpu_rt_matmul_kernel(int64_t cap);
