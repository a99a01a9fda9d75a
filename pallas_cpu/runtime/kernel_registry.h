// Process-wide map from kernel id (a fingerprint carried in the HLO) to the
// native entry point compiled for it in this process.
#ifndef PALLAS_CPU_KERNEL_REGISTRY_H_
#define PALLAS_CPU_KERNEL_REGISTRY_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "races.h"

#include "abi.h"

namespace pallas_cpu {

// Returns the entry for `kernel_id`, compiling `kernel_ir` through the
// Python-installed compiler on a miss.  On failure returns nullptr and sets
// `error`.
PallasCpuEntryFn LookupOrCompile(std::string_view kernel_id,
                                 std::string_view kernel_ir,
                                 std::string* error);

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
