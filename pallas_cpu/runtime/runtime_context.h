// Per-call runtime state: errors, semaphore names, pending DMAs.
#ifndef PALLAS_CPU_RUNTIME_CONTEXT_H_
#define PALLAS_CPU_RUNTIME_CONTEXT_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "abi.h"

namespace pallas_cpu {

// One strided window of memory, copied out of an MLIR memref descriptor.
struct StridedWindow {
  char* base = nullptr;  // aligned pointer + offset, in bytes
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;  // in elements
  int64_t NumElements() const;
};

struct PendingDma {
  StridedWindow src, dst;
  int64_t elem_bytes;
  int32_t* sem;
};

}  // namespace pallas_cpu

struct PallasCpuRuntimeContext {
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::string message;

  // Static facts about the kernel, for messages.
  std::vector<std::string> semaphore_names;
  std::vector<int64_t> grid;

  // DMAs started in "on_wait" mode and not yet executed.
  std::vector<pallas_cpu::PendingDma> pending_dmas;

  // pl.debug_print records, (print id, raw values), in execution order.
  std::vector<std::pair<int64_t, std::vector<int64_t>>> prints;
  std::vector<std::string> check_messages;

  // Per output: block offset -> grid index of its first visit.
  std::vector<std::unordered_map<int64_t, int64_t>> visited_blocks;

  // Keeps the first error only: later ones are usually consequences.
  void Fail(std::string msg) {
    std::lock_guard<std::mutex> lock(mu);
    if (failed.load(std::memory_order_relaxed)) return;
    message = std::move(msg);
    failed.store(true, std::memory_order_release);
  }

  // "grid point (i, j)" for a row-major linear index.
  std::string GridPoint(int64_t linear) const;
  std::string SemaphoreName(int64_t sem_id, int64_t offset) const;
};

#endif  // PALLAS_CPU_RUNTIME_CONTEXT_H_
