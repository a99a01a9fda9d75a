// Runtime error entry points called from generated code, and the
// formatting of kernel facts in messages.
#include <unistd.h>

#include <cstdlib>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

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

std::string PallasCpuRuntimeContext::Iteration(int64_t linear) const {
  std::string g = GridPoint(linear);  // "grid point (i, j)"
  std::string t = g.substr(g.find('('));
  if (kernel->grid.size() == 1) t.insert(t.size() - 1, ",");
  return t;
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

namespace {
// "a<TAB>b" -> {"a", "b"}.
std::pair<std::string, std::string> SplitTab(const std::string& s) {
  size_t tab = s.find('\t');
  if (tab == std::string::npos) return {s, ""};
  return {s.substr(0, tab), s.substr(tab + 1)};
}

std::vector<int64_t> ParseInts(const std::string& s) {
  std::vector<int64_t> out;
  std::istringstream is(s);
  std::string item;
  while (std::getline(is, item, ',')) {
    if (!item.empty()) out.push_back(std::strtoll(item.c_str(), nullptr, 10));
  }
  return out;
}
}  // namespace

extern "C" void pallas_cpu_rt_block_index(PallasCpuRuntimeContext* ctx,
                                          int64_t dim, int64_t index) {
  if (dim < 0) return;
  if (ctx->block_index.size() <= static_cast<size_t>(dim)) {
    ctx->block_index.resize(dim + 1);
  }
  ctx->block_index[dim] = index;
}

extern "C" void pallas_cpu_rt_block_out_of_bounds(
    PallasCpuRuntimeContext* ctx, int64_t site, int64_t dim, int64_t start,
    int64_t size, int64_t limit, int64_t grid_index) {
  auto [name, rest] = SplitTab(ctx->Site(site));
  auto [operand, which] = SplitTab(rest);
  std::ostringstream os;
  // TPU interpret mode: 'Out-of-bounds block index (2, 0) for input "x_ref"
  // in iteration (2,) on device 0 (core 0): reading [...] ...'.
  os << "Out-of-bounds block index (";
  const auto& idx = ctx->block_index;
  for (size_t d = 0; d < idx.size(); ++d) {
    os << (d ? ", " : "") << idx[d];
  }
  os << (idx.size() == 1 ? ",)" : ")") << " for " << name << " in iteration "
     << ctx->Iteration(grid_index) << ": block window out of bounds: "
     << operand << ", dimension " << dim << ": window [" << start << ", "
     << start + size << ") does not start inside [0, " << limit << ") ("
     << which << ", at " << ctx->GridPoint(grid_index) << ")";
  ctx->block_index.clear();
  ctx->Fail(os.str());
}

namespace {
void IndexOutOfBounds(PallasCpuRuntimeContext* ctx, const std::string& site,
                      int64_t dim, int64_t start, int64_t size, int64_t limit,
                      int64_t grid_index) {
  auto [what, where] = SplitTab(site);
  std::ostringstream os;
  // TPU interpret mode: "Out-of-bounds read of (<buffer>): reading [...]
  // but buffer has shape ..." (swap, masked swap, write for the others).
  os << what << " in iteration " << ctx->Iteration(grid_index)
     << (where.empty() ? "" : " at " + where)
     << ": ref index out of bounds at " << ctx->GridPoint(grid_index)
     << ": dimension " << dim << ": slice [" << start << ", " << start + size
     << ") is not inside [0, " << limit << ")";
  ctx->Fail(os.str());
}
}  // namespace

extern "C" void pallas_cpu_rt_index_out_of_bounds_at(
    PallasCpuRuntimeContext* ctx, int64_t site, int64_t dim, int64_t start,
    int64_t size, int64_t limit, int64_t grid_index) {
  IndexOutOfBounds(ctx, ctx->Site(site), dim, start, size, limit, grid_index);
}

extern "C" void pallas_cpu_rt_index_out_of_bounds(PallasCpuRuntimeContext* ctx,
                                                  int64_t dim, int64_t start,
                                                  int64_t size, int64_t limit,
                                                  int64_t grid_index) {
  IndexOutOfBounds(ctx, "Out-of-bounds access of a ref", dim, start, size,
                   limit, grid_index);
}

namespace {
// The (kernel name, site) pairs whose crossing window was reported as a
// warning in this process: once is enough.
struct WarnedSites {
  std::mutex mu;
  std::unordered_set<std::string> sites;
};

WarnedSites& GetWarnedSites() {
  static WarnedSites* warned = new WarnedSites();  // never destroyed
  return *warned;
}
}  // namespace

extern "C" void pallas_cpu_rt_crossing_window_at(
    PallasCpuRuntimeContext* ctx, int64_t site, int64_t dim, int64_t start,
    int64_t size, int64_t limit, int64_t mode, int64_t grid_index) {
  if (mode != 0 && mode != 1) return;
  if (ctx->failed.load(std::memory_order_acquire)) return;
  std::string text = ctx->Site(site);
  if (mode == 1) {
    WarnedSites& warned = GetWarnedSites();
    std::lock_guard<std::mutex> lock(warned.mu);
    if (!warned.sites.insert(ctx->kernel->name + '\n' + text).second) return;
  }
  auto [what, rest] = SplitTab(text);
  auto [where, tpu] = SplitTab(rest);
  std::ostringstream os;
  os << what << " in iteration " << ctx->Iteration(grid_index)
     << (where.empty() ? "" : " at " + where)
     << ": its window crosses the ref's end at " << ctx->GridPoint(grid_index)
     << ": dimension " << dim << ": window [" << start << ", "
     << start + size << ") is not inside [0, " << limit
     << "); interpret mode allows it (the mask covers only in-bounds "
        "elements), but "
     << (tpu.empty() ? "a TPU does not" : tpu)
     << (mode == 0 ? " (tpu_checks='error'; 'warn' runs it as interpret "
                     "mode does)"
                   : " (tpu_checks='warn': reported once per access; "
                     "tpu_checks='error' makes it an error, 'off' silences "
                     "it)");
  if (mode == 0) {
    ctx->Fail(os.str());
  } else {
    ctx->tpu_warnings.push_back(os.str());
  }
}

extern "C" int32_t pallas_cpu_rt_failed(PallasCpuRuntimeContext* ctx) {
  return ctx->failed.load(std::memory_order_acquire) ? 1 : 0;
}

namespace {
// The block at element offset `offset` of a row-major array, as interpret
// mode prints its range: "(slice(0, 8, 1), slice(0, 128, 1))", a squeezed
// dimension as its index.  `geometry` is "<array dims>;<block dims>".
std::string BlockRange(const std::string& geometry, int64_t offset) {
  size_t semi = geometry.find(';');
  if (semi == std::string::npos) return "at element offset " + std::to_string(offset);
  std::vector<int64_t> dims = ParseInts(geometry.substr(0, semi));
  std::vector<int64_t> block = ParseInts(geometry.substr(semi + 1));
  if (dims.size() != block.size()) return "at element offset " + std::to_string(offset);
  std::vector<int64_t> starts(dims.size());
  int64_t rest = offset;
  for (size_t d = dims.size(); d-- > 0;) {
    int64_t n = dims[d] > 0 ? dims[d] : 1;
    starts[d] = rest % n;
    rest /= n;
  }
  std::ostringstream os;
  os << "(";
  for (size_t d = 0; d < dims.size(); ++d) {
    os << (d ? ", " : "");
    if (block[d] == 0) {
      os << starts[d];
    } else {
      os << "slice(" << starts[d] << ", " << starts[d] + block[d] << ", 1)";
    }
  }
  os << (dims.size() == 1 ? ",)" : ")");
  return os.str();
}
}  // namespace

extern "C" void pallas_cpu_rt_output_block_changed(PallasCpuRuntimeContext* ctx,
                                                   int64_t output,
                                                   int64_t block_offset,
                                                   int64_t site,
                                                   int64_t grid_index) {
  if (output < 0) return;
  if (ctx->visited_blocks.size() <= static_cast<size_t>(output)) {
    ctx->visited_blocks.resize(output + 1);
  }
  auto [it, fresh] =
      ctx->visited_blocks[output].emplace(block_offset, grid_index);
  if (fresh) return;
  std::ostringstream os;
  // TPU interpret mode: "Revisited block (slice(0, 8, 1), ...) of output 0
  // in iteration (2,). The block was previously visited in iterations (0,)
  // through (0,) ."
  os << "Revisited block " << BlockRange(ctx->Site(site), block_offset)
     << " of output " << output << " in iteration "
     << ctx->Iteration(grid_index)
     << ". The block was previously visited from iteration "
     << ctx->Iteration(it->second) << " on: revisited block at element offset "
     << block_offset << " of output " << output << " at "
     << ctx->GridPoint(grid_index) << "; it was first visited at "
     << ctx->GridPoint(it->second)
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
