// Runtime error entry points called from generated code, and the
// formatting of kernel facts in messages.
#include <unistd.h>

#include <cstdlib>
#include <cstdio>
#include <sstream>

#include "abi.h"
#include "launch.h"
#include "runtime_context.h"

namespace {
// The context of the kernel call running on this thread: generated code's
// allocation functions reach it here (their signature has no context).
thread_local PallasCpuRuntimeContext* tls_context = nullptr;

std::string Bytes(int64_t n) {
  std::ostringstream os;
  os << n << " bytes";
  static const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int unit = -1;
  while (v >= 1024 && unit < 3) {
    v /= 1024;
    ++unit;
  }
  if (unit >= 0) {
    os.precision(3);
    os << " (" << v << " " << kUnits[unit] << ")";
  }
  return os.str();
}

// Larger requests than the machine's memory fail even where the kernel's
// overcommit policy would hand out address space (touching it would bring
// in the OOM killer instead of an error).
int64_t PhysicalMemory() {
  static const int64_t bytes = [] {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page
                                 : INT64_MAX;
  }();
  return bytes;
}
}  // namespace

namespace pallas_cpu {
ScopedContext::ScopedContext(PallasCpuRuntimeContext* ctx)
    : saved_(tls_context) {
  tls_context = ctx;
}
ScopedContext::~ScopedContext() { tls_context = saved_; }
}  // namespace pallas_cpu

// memref.alloc/dealloc in generated code (finalize-memref-to-llvm with
// use-generic-functions): every kernel allocation is checked.  A failed one
// returns null and fails the call; the kernel entry checks for failure
// after its allocations and runs nothing.
extern "C" PALLAS_CPU_EXPORT void* _mlir_memref_to_llvm_alloc(uint64_t size) {
  void* p = static_cast<int64_t>(size) <= PhysicalMemory() ? std::malloc(size)
                                                           : nullptr;
  if (p == nullptr && size != 0) {
    std::ostringstream os;
    os << "failed to allocate " << Bytes(static_cast<int64_t>(size));
    if (tls_context != nullptr) {
      std::string name = tls_context->AllocationName(size);
      if (!name.empty()) os << " for " << name;
      os << " (the machine has " << Bytes(PhysicalMemory()) << ")";
      tls_context->Fail(os.str());
    } else {
      std::fprintf(stderr, "pallas_cpu: %s outside a kernel call\n",
                   os.str().c_str());
    }
  }
  return p;
}

extern "C" PALLAS_CPU_EXPORT void _mlir_memref_to_llvm_free(void* p) {
  std::free(p);
}

void PallasCpuRuntimeContext::Fail(std::string msg) {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (failed.load(std::memory_order_relaxed)) return;
    if (launch != nullptr && actor != nullptr) {
      std::string who = launch->ActorName(*actor);
      if (!who.empty()) msg = who + ": " + msg;
    }
    message = std::move(msg);
    failed.store(true, std::memory_order_release);
  }
  if (launch != nullptr) launch->NoteFailure(message);
}

std::string PallasCpuRuntimeContext::Site(int64_t site) const {
  if (site >= 0 && site < static_cast<int64_t>(kernel->sites.size())) {
    return kernel->sites[site];
  }
  return "site #" + std::to_string(site);
}

std::string PallasCpuRuntimeContext::AllocationName(int64_t requested) const {
  // memref.alloc asks for the buffer's bytes plus its alignment.
  std::string names;
  for (const auto& [bytes, name] : kernel->allocations) {
    if (requested >= bytes && requested <= bytes + 64) {
      names += (names.empty() ? "" : " or ") + name;
    }
  }
  return names;
}

std::string PallasCpuRuntimeContext::GridPoint(int64_t linear) const {
  const std::vector<int64_t>& grid = kernel->grid;
  std::vector<int64_t> idx(grid.size());
  for (size_t d = grid.size(); d-- > 0;) {
    int64_t n = grid[d] > 0 ? grid[d] : 1;
    idx[d] = linear % n;
    linear /= n;
  }
  std::ostringstream os;
  os << "grid point (";
  for (size_t d = 0; d < idx.size(); ++d) os << (d ? ", " : "") << idx[d];
  os << ")";
  return os.str();
}

std::string PallasCpuRuntimeContext::SemaphoreName(int64_t sem_id,
                                                   int64_t offset) const {
  std::ostringstream os;
  os << "semaphore ";
  const auto& names = kernel->semaphore_names;
  if (sem_id >= 0 && sem_id < static_cast<int64_t>(names.size())) {
    os << "'" << names[sem_id] << "'";
  } else {
    os << "#" << sem_id;
  }
  os << "[" << offset << "]";
  return os.str();
}

extern "C" void pallas_cpu_rt_block_out_of_bounds(PallasCpuRuntimeContext* ctx,
                                                  int64_t operand, int64_t dim,
                                                  int64_t start, int64_t size,
                                                  int64_t limit) {
  std::ostringstream os;
  os << "block window out of bounds: operand " << operand << ", dimension "
     << dim << ": window [" << start << ", " << start + size
     << ") does not start inside [0, " << limit << ")";
  ctx->Fail(os.str());
}

extern "C" void pallas_cpu_rt_index_out_of_bounds(PallasCpuRuntimeContext* ctx,
                                                  int64_t dim, int64_t start,
                                                  int64_t size, int64_t limit,
                                                  int64_t grid_index) {
  std::ostringstream os;
  os << "ref index out of bounds at " << ctx->GridPoint(grid_index)
     << ": dimension " << dim << ": slice [" << start << ", " << start + size
     << ") is not inside [0, " << limit << ")";
  ctx->Fail(os.str());
}

extern "C" int32_t pallas_cpu_rt_failed(PallasCpuRuntimeContext* ctx) {
  return ctx->failed.load(std::memory_order_acquire) ? 1 : 0;
}

extern "C" void pallas_cpu_rt_output_block_changed(PallasCpuRuntimeContext* ctx,
                                                   int64_t output,
                                                   int64_t block_offset,
                                                   int64_t grid_index) {
  if (output < 0) return;
  if (ctx->visited_blocks.size() <= static_cast<size_t>(output)) {
    ctx->visited_blocks.resize(output + 1);
  }
  auto [it, fresh] =
      ctx->visited_blocks[output].emplace(block_offset, grid_index);
  if (fresh) return;
  std::ostringstream os;
  os << "revisited block at element offset " << block_offset << " of output "
     << output << " at " << ctx->GridPoint(grid_index)
     << "; it was first visited at " << ctx->GridPoint(it->second)
     << " and left in between (its earlier write-back would be lost on TPU)";
  ctx->Fail(os.str());
}

extern "C" void pallas_cpu_rt_debug_print(PallasCpuRuntimeContext* ctx,
                                          int64_t print_id, int64_t* alloc,
                                          int64_t* aligned, int64_t offset,
                                          int64_t size, int64_t stride) {
  (void)alloc;
  std::vector<int64_t> values(size);
  for (int64_t i = 0; i < size; ++i) values[i] = aligned[offset + i * stride];
  ctx->prints.emplace_back(print_id, std::move(values));
}

extern "C" void pallas_cpu_rt_check_failed(PallasCpuRuntimeContext* ctx,
                                           int64_t check_id,
                                           int64_t grid_index) {
  std::ostringstream os;
  os << "debug check failed at " << ctx->GridPoint(grid_index) << ": ";
  if (check_id >= 0 &&
      check_id < static_cast<int64_t>(ctx->kernel->check_messages.size())) {
    os << ctx->kernel->check_messages[check_id];
  } else {
    os << "check #" << check_id;
  }
  ctx->Fail(os.str());
}
