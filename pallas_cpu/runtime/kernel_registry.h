// Process-wide map from kernel id (a fingerprint carried in the HLO) to the
// native entry point compiled for it in this process.
#ifndef PALLAS_CPU_KERNEL_REGISTRY_H_
#define PALLAS_CPU_KERNEL_REGISTRY_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "races.h"

#include "abi.h"

namespace pallas_cpu {

// A kernel's native code in this process, and its tier-up bookkeeping.
//
// Tier-up (pallas_cpu/lowering/cost.py): a kernel the cost model built at
// -O0 because it looked small comes with a budget (FFI attribute
// `tier_up_after_us`).  Once its calls have taken that long in all, the
// runtime asks Python (once) for its -O3 build, which Python compiles in the
// background and registers under the same id: later calls run the faster
// code (the results are the same bits at every level).
struct KernelEntry {
  std::atomic<PallasCpuEntryFn> fn{nullptr};
  std::atomic<int64_t> spent_ns{0};
  std::atomic<bool> tier_up_asked{false};
};

// Returns the entry for `kernel_id`, compiling `kernel_ir` through the
// Python-installed compiler on a miss.  On failure returns nullptr and sets
// `error`.  Entries live as long as the process.
KernelEntry* LookupOrCompile(std::string_view kernel_id,
                             std::string_view kernel_ir, std::string* error);

// Adds one call's time to `entry`; past `budget_ns`, asks Python for the
// kernel's -O3 build (once).
void RecordCall(KernelEntry* entry, std::string_view kernel_id,
                std::string_view kernel_ir, int64_t elapsed_ns,
                int64_t budget_ns);

// Sends pl.debug_print records to the Python printer (in order).
void PrintRecords(std::string_view table,
                  const std::vector<std::pair<int64_t, std::vector<int64_t>>>&
                      records);

// Which Python warning hook a finding goes to.
enum class WarningKind { kKernelExit, kTpuCompatibility };
// Sends kernel-exit (or TPU-compatibility) findings to the Python warning
// hook of their kind (in order).
void Warn(std::string_view kernel_name, const std::vector<std::string>& messages,
          WarningKind kind = WarningKind::kKernelExit);
// Hands each race found to Python (as JSON; pallas_cpu/races.py).
void ReportRaces(std::string_view kernel_name,
                 const std::vector<RaceReport>& reports);

}  // namespace pallas_cpu

#endif  // PALLAS_CPU_KERNEL_REGISTRY_H_
