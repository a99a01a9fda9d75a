#include "kernel_info.h"

#include <cstdlib>

namespace pallas_cpu {
namespace {

std::vector<std::string> SplitLines(std::string_view s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find('\n', start);
    if (end == std::string_view::npos) end = s.size();
    out.emplace_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

KernelInfo KernelInfo::Decode(std::string_view name, const int64_t* grid,
                              size_t grid_rank,
                              std::string_view semaphore_names,
                              std::string_view check_messages,
                              std::string_view sites,
                              std::string_view allocations,
                              std::string_view debug_prints) {
  KernelInfo info;
  info.name = std::string(name);
  info.grid.assign(grid, grid + grid_rank);
  info.semaphore_names = SplitLines(semaphore_names);
  info.check_messages = SplitLines(check_messages);
  info.sites = SplitLines(sites);
  for (const std::string& line : SplitLines(allocations)) {
    size_t tab = line.find('\t');
    if (tab == std::string::npos) continue;
    info.allocations.emplace_back(std::strtoll(line.c_str(), nullptr, 10),
                                  line.substr(tab + 1));
  }
  info.debug_prints = debug_prints;
  return info;
}

}  // namespace pallas_cpu
