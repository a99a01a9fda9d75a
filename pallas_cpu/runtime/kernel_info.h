// What the runtime knows of a kernel besides its code: the static facts the
// lowering gathered for messages and prints.  Decoded once per call from
// the custom call's attributes -- the C++ end of the encoding that
// pallas_cpu/abi.py (RuntimeInfo.ffi_attributes) writes.
#ifndef PALLAS_CPU_KERNEL_INFO_H_
#define PALLAS_CPU_KERNEL_INFO_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pallas_cpu {

struct KernelInfo {
  std::string name;
  std::vector<int64_t> grid;                   // 0 for a dynamic dimension
  std::vector<std::string> semaphore_names;    // by sem_id
  std::vector<std::string> check_messages;     // by check id
  std::vector<std::string> sites;              // by site id
  std::vector<std::pair<int64_t, std::string>> allocations;  // (bytes, name)
  std::string_view debug_prints;               // JSON, formatted by Python

  // Attribute values as the custom call carries them: one entry per line;
  // allocations as "<bytes>\t<name>" lines.
  static KernelInfo Decode(std::string_view name, const int64_t* grid,
                           size_t grid_rank, std::string_view semaphore_names,
                           std::string_view check_messages,
                           std::string_view sites,
                           std::string_view allocations,
                           std::string_view debug_prints);
};

}  // namespace pallas_cpu

#endif  // PALLAS_CPU_KERNEL_INFO_H_
