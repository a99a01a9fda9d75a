// Per-call runtime state: errors, semaphore names, DMAs in flight.
#ifndef PALLAS_CPU_RUNTIME_CONTEXT_H_
#define PALLAS_CPU_RUNTIME_CONTEXT_H_

#include <atomic>
#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "abi.h"
#include "kernel_info.h"

namespace pallas_cpu {

// One strided window of memory, copied out of an MLIR memref descriptor.
struct StridedWindow {
  char* base = nullptr;  // aligned pointer + offset, in bytes
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;  // in elements
  int64_t NumElements() const;
};

// [lo, hi] byte addresses a window touches.
struct Extent {
  const char* lo;
  const char* hi;
  bool Overlaps(const char* base, int64_t nbytes) const {
    return nbytes > 0 && lo < base + nbytes && base <= hi;
  }
};

// A DMA from its start until waits have consumed its completion: pending
// (not yet copied, "on_wait" mode) or landed and not fully waited for.  It
// lives in the queue of the actor that started it; a remote DMA's `dst`
// and `sem` are in the memory of another device's actor (`dst_actor`).
struct Dma {
  StridedWindow src, dst;
  int64_t elem_bytes;
  int32_t* sem;       // signalled when the write lands (the receiver's)
  int32_t* send_sem;  // remote DMAs: signalled when the read is done (the
                      // sender's); nullptr for local ones
  int32_t units;      // what completion adds to `sem` (and `send_sem`):
                      // bytes (DMA semaphores) or 1 (regular semaphores, as
                      // on TPU v6+)
  int32_t unwaited;       // units of the write's completion not yet waited
  int32_t send_unwaited;  // units of the read's completion not yet waited
  bool landed = false;
  bool busy = false;  // being copied, the launch's lock released meanwhile
  int64_t site;       // FFI attribute `sites`: the kernel's source line
  int64_t grid_index;
  int64_t dst_actor;  // the launch's index of the actor owning `dst`
  int32_t race_actor = -1;  // its actor in the race detector (races.h)
  // add=True: the element arithmetic that accumulates the source into the
  // destination (DmaAdd in abi.h); kDmaCopy overwrites.
  int64_t add = 0;
  // A window reaching into tile padding (abi.h, `pad`): `src` and `dst` are
  // then the part copied (inside both arrays), `pad_dst` the destination's
  // part inside its array, whose elements outside `dst` get `fill` (the
  // source's padding, read).  Empty sizes: no padding.
  StridedWindow pad_dst;
  uint64_t fill = 0;
  // The destination it writes: `pad_dst` if any, else `dst`.
  const StridedWindow& written() const {
    return pad_dst.sizes.empty() ? dst : pad_dst;
  }
};

class Launch;
struct Actor;

// Returns once no DMA of ctx's launch is being copied outside the lock
// (before a queue drops DMAs).  `lock` holds the launch's lock.
void WaitForIdleDmas(PallasCpuRuntimeContext* ctx,
                     std::unique_lock<std::mutex>& lock);

// Makes `ctx` the context of allocations on this thread while alive.
class ScopedContext {
 public:
  explicit ScopedContext(PallasCpuRuntimeContext* ctx);
  ~ScopedContext();
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;

 private:
  PallasCpuRuntimeContext* saved_;
};

}  // namespace pallas_cpu

struct PallasCpuRuntimeContext {
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::string message;

  // Static facts about the kernel, for messages (shared by the call's
  // contexts).
  const pallas_cpu::KernelInfo* kernel = nullptr;

  // The launch this context's actor belongs to (launch.h): semaphores are
  // updated under its lock.
  pallas_cpu::Launch* launch = nullptr;
  pallas_cpu::Actor* actor = nullptr;
  // The logical id of the device this instance runs on (shard_map).
  int64_t device = 0;

  // DMAs started and not yet waited for, in start order.  A list: a DMA
  // being copied with the launch's lock released (busy) must stay where
  // it is while others are erased.
  std::list<pallas_cpu::Dma> dmas;

  // Kernel-exit findings reported as warnings (exit checks in "warn" mode).
  std::vector<std::string> warnings;
  // TPU-compatibility findings reported as warnings (tpu_checks="warn").
  std::vector<std::string> tpu_warnings;

  // pl.debug_print records, (print id, raw values), in execution order.
  std::vector<std::pair<int64_t, std::vector<int64_t>>> prints;

  // Per output: block offset -> grid index of its first visit.
  std::vector<std::unordered_map<int64_t, int64_t>> visited_blocks;

  // The block index being reported out of bounds
  // (pallas_cpu_rt_block_index), one entry per dimension.
  std::vector<int64_t> block_index;

  // Keeps the first error only: later ones are usually consequences.  The
  // other actors of the launch stop waiting (errors.cc).
  void Fail(std::string msg);

  // "grid point (i, j)" for a row-major linear index.
  std::string GridPoint(int64_t linear) const;
  // The same grid point as interpret mode names an iteration: a Python
  // tuple, "(i,)" or "(i, j)".
  std::string Iteration(int64_t linear) const;
  std::string SemaphoreName(int64_t sem_id, int64_t offset) const;
  std::string Site(int64_t site) const;
  // Names the allocation(s) a failed request of `requested` bytes was for.
  std::string AllocationName(int64_t requested) const;
};

#endif  // PALLAS_CPU_RUNTIME_CONTEXT_H_
