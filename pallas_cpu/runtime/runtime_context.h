// Per-call runtime state: the first error raised by generated code.
#ifndef PALLAS_CPU_RUNTIME_CONTEXT_H_
#define PALLAS_CPU_RUNTIME_CONTEXT_H_

#include <atomic>
#include <mutex>
#include <string>

#include "abi.h"

struct PallasCpuRuntimeContext {
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::string message;

  // Keeps the first error only: later ones are usually consequences.
  void Fail(std::string msg) {
    std::lock_guard<std::mutex> lock(mu);
    if (failed.load(std::memory_order_relaxed)) return;
    message = std::move(msg);
    failed.store(true, std::memory_order_release);
  }
};

#endif  // PALLAS_CPU_RUNTIME_CONTEXT_H_
