// Local DMAs and semaphores, single core: TPU interpret mode's semantics.
//
// A DMA signals its semaphore with the number of bytes it copied; a wait
// decrements.  In "on_wait" mode a started DMA runs only when a wait on its
// semaphore needs it (newest first, as interpret mode does), which exposes
// kernels that read a DMA's destination before waiting.  On one core, a wait
// whose semaphore is short and has no pending DMA can never be satisfied:
// that is reported as a deadlock instead of hanging.
#include <cstring>
#include <utility>
#include <sstream>

#include "abi.h"
#include "runtime_context.h"

namespace pallas_cpu {
namespace {

StridedWindow FromDescriptor(int64_t rank, void* desc, int64_t elem_bytes) {
  auto* words = static_cast<int64_t*>(desc);
  StridedWindow w;
  char* aligned = reinterpret_cast<char*>(words[1]);
  w.base = aligned + words[2] * elem_bytes;
  w.sizes.assign(words + 3, words + 3 + rank);
  w.strides.assign(words + 3 + rank, words + 3 + 2 * rank);
  return w;
}

void CopyRec(const StridedWindow& src, const StridedWindow& dst, size_t dim,
             const char* s, char* d, int64_t elem_bytes) {
  const int64_t n = src.sizes[dim];
  if (dim + 1 == src.sizes.size()) {
    if (src.strides[dim] == 1 && dst.strides[dim] == 1) {
      std::memmove(d, s, n * elem_bytes);
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      std::memmove(d + i * dst.strides[dim] * elem_bytes,
                   s + i * src.strides[dim] * elem_bytes, elem_bytes);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    CopyRec(src, dst, dim + 1, s + i * src.strides[dim] * elem_bytes,
            d + i * dst.strides[dim] * elem_bytes, elem_bytes);
  }
}

// [first, last] byte addresses a window touches.
std::pair<const char*, const char*> Extent(const StridedWindow& w,
                                           int64_t elem_bytes) {
  const char* lo = w.base;
  const char* hi = w.base;
  for (size_t d = 0; d < w.sizes.size(); ++d) {
    int64_t reach = (w.sizes[d] - 1) * w.strides[d] * elem_bytes;
    (reach < 0 ? lo : hi) += reach;
  }
  return {lo, hi + elem_bytes - 1};
}

StridedWindow Contiguous(char* base, const std::vector<int64_t>& sizes) {
  StridedWindow w;
  w.base = base;
  w.sizes = sizes;
  w.strides.assign(sizes.size(), 1);
  for (size_t d = sizes.size(); d-- > 1;) {
    w.strides[d - 1] = w.strides[d] * sizes[d];
  }
  return w;
}

void Execute(const PendingDma& dma) {
  const int64_t n = dma.src.NumElements();
  if (dma.src.sizes.empty()) {
    std::memmove(dma.dst.base, dma.src.base, dma.elem_bytes);
  } else if (n > 0) {
    auto [slo, shi] = Extent(dma.src, dma.elem_bytes);
    auto [dlo, dhi] = Extent(dma.dst, dma.elem_bytes);
    if (slo <= dhi && dlo <= shi) {
      // Overlapping windows (aliased operands): read everything first, as
      // interpret mode does, then write.
      std::vector<char> staging(n * dma.elem_bytes);
      StridedWindow tmp = Contiguous(staging.data(), dma.src.sizes);
      CopyRec(dma.src, tmp, 0, dma.src.base, tmp.base, dma.elem_bytes);
      CopyRec(tmp, dma.dst, 0, tmp.base, dma.dst.base, dma.elem_bytes);
    } else {
      CopyRec(dma.src, dma.dst, 0, dma.src.base, dma.dst.base, dma.elem_bytes);
    }
  }
  *dma.sem += static_cast<int32_t>(dma.src.NumElements() * dma.elem_bytes);
}

// Runs pending DMAs signalling `sem`, newest first, until it holds `value`.
void RunPendingFor(PallasCpuRuntimeContext* ctx, int32_t* sem, int32_t value) {
  auto& q = ctx->pending_dmas;
  for (size_t i = q.size(); i-- > 0 && *sem < value;) {
    if (q[i].sem != sem) continue;
    PendingDma dma = std::move(q[i]);
    q.erase(q.begin() + i);
    Execute(dma);
  }
}

}  // namespace

int64_t StridedWindow::NumElements() const {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

}  // namespace pallas_cpu

using pallas_cpu::PendingDma;

extern "C" void pallas_cpu_rt_dma_start(
    PallasCpuRuntimeContext* ctx, int64_t src_rank, void* src_desc,
    int64_t dst_rank, void* dst_desc, int64_t elem_bytes, int32_t* sem_alloc,
    int32_t* sem, int64_t sem_offset, int64_t sem_id, int64_t mode,
    int64_t grid_index) {
  (void)sem_alloc;
  PendingDma dma{pallas_cpu::FromDescriptor(src_rank, src_desc, elem_bytes),
                 pallas_cpu::FromDescriptor(dst_rank, dst_desc, elem_bytes),
                 elem_bytes, sem + sem_offset};
  if (dma.src.sizes != dma.dst.sizes) {
    std::ostringstream os;
    os << "DMA at " << ctx->GridPoint(grid_index) << " signalling "
       << ctx->SemaphoreName(sem_id, sem_offset)
       << ": source and destination shapes differ";
    ctx->Fail(os.str());
    return;
  }
  if (mode == 0) {
    pallas_cpu::Execute(dma);
  } else {
    ctx->pending_dmas.push_back(std::move(dma));
  }
}

extern "C" void pallas_cpu_rt_sem_signal(PallasCpuRuntimeContext* ctx,
                                         int32_t* alloc, int32_t* sem,
                                         int64_t offset, int32_t inc,
                                         int64_t sem_id, int64_t grid_index) {
  (void)alloc;
  (void)ctx;
  (void)sem_id;
  (void)grid_index;
  sem[offset] += inc;
}

extern "C" int32_t pallas_cpu_rt_sem_wait(PallasCpuRuntimeContext* ctx,
                                          int32_t* alloc, int32_t* sem,
                                          int64_t offset, int32_t value,
                                          int64_t sem_id, int64_t grid_index) {
  (void)alloc;
  int32_t* counter = sem + offset;
  if (*counter < value) pallas_cpu::RunPendingFor(ctx, counter, value);
  if (*counter < value) {
    std::ostringstream os;
    os << "deadlock: wait on " << ctx->SemaphoreName(sem_id, offset)
       << " for " << value << " at " << ctx->GridPoint(grid_index)
       << " can never complete: it holds " << *counter
       << " and no pending DMA or other core can signal it";
    ctx->Fail(os.str());
    return 0;
  }
  *counter -= value;
  return 1;
}

extern "C" int32_t pallas_cpu_rt_sem_read(PallasCpuRuntimeContext* ctx,
                                          int32_t* alloc, int32_t* sem,
                                          int64_t offset) {
  (void)ctx;
  (void)alloc;
  return sem[offset];
}

// One DMA entry point per element type: generated code passes unranked
// memrefs, whose MLIR type names the element type, so each type needs its own
// symbol; all share one implementation.
#define PALLAS_CPU_DMA_START_FOR(TY)                                          \
  extern "C" PALLAS_CPU_EXPORT void pallas_cpu_rt_dma_start_##TY(             \
      PallasCpuRuntimeContext* ctx, int64_t src_rank, void* src_desc,         \
      int64_t dst_rank, void* dst_desc, int64_t elem_bytes,                   \
      int32_t* sem_alloc, int32_t* sem, int64_t sem_offset, int64_t sem_id,   \
      int64_t mode, int64_t grid_index) {                                     \
    pallas_cpu_rt_dma_start(ctx, src_rank, src_desc, dst_rank, dst_desc,      \
                            elem_bytes, sem_alloc, sem, sem_offset, sem_id,   \
                            mode, grid_index);                                \
  }
PALLAS_CPU_DMA_START_FOR(f16)
PALLAS_CPU_DMA_START_FOR(bf16)
PALLAS_CPU_DMA_START_FOR(f32)
PALLAS_CPU_DMA_START_FOR(f64)
PALLAS_CPU_DMA_START_FOR(i8)
PALLAS_CPU_DMA_START_FOR(i16)
PALLAS_CPU_DMA_START_FOR(i32)
PALLAS_CPU_DMA_START_FOR(i64)
PALLAS_CPU_DMA_START_FOR(f8E4M3FN)
PALLAS_CPU_DMA_START_FOR(f8E5M2)
#undef PALLAS_CPU_DMA_START_FOR

// DMAs still pending when the kernel returns land then, as they would on a
// TPU (the hardware completes them); interpret mode would drop them.
void PallasCpuRunPendingDmas(PallasCpuRuntimeContext* ctx) {
  auto& q = ctx->pending_dmas;
  while (!q.empty()) {
    PendingDma dma = std::move(q.back());
    q.pop_back();
    pallas_cpu::Execute(dma);
  }
}
