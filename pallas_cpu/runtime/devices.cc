#include "devices.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace pallas_cpu {
namespace {

struct Calls {
  std::vector<int64_t> per_device;  // calls each device has made so far
  // call number -> (launch, devices still in it)
  std::map<int64_t, std::pair<std::shared_ptr<Launch>, int64_t>> open;
};

std::mutex registry_mu;
std::map<std::pair<int64_t, std::string>, Calls>& Registry() {
  static auto* registry =
      new std::map<std::pair<int64_t, std::string>, Calls>();
  return *registry;
}

}  // namespace

std::shared_ptr<Launch> JoinLaunch(int64_t run_id, std::string_view kernel_id,
                                   int64_t device, int64_t devices,
                                   int64_t cores, bool mesh) {
  std::lock_guard<std::mutex> lock(registry_mu);
  Calls& calls = Registry()[{run_id, std::string(kernel_id)}];
  if (calls.per_device.empty()) calls.per_device.assign(devices, 0);
  int64_t n = calls.per_device[device]++;
  auto& slot = calls.open[n];
  if (slot.first == nullptr) {
    slot.first = std::make_shared<Launch>(devices, cores, mesh);
    slot.second = devices;
  }
  return slot.first;
}

void LeaveLaunch(int64_t run_id, std::string_view kernel_id,
                 const std::shared_ptr<Launch>& launch) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = Registry().find({run_id, std::string(kernel_id)});
  if (it == Registry().end()) return;
  Calls& calls = it->second;
  for (auto open = calls.open.begin(); open != calls.open.end(); ++open) {
    if (open->second.first != launch) continue;
    if (--open->second.second == 0) calls.open.erase(open);
    break;
  }
  // Forget the kernel's calls of this run once every device has made the
  // same number of them and none is open (a later call starts over at 0 on
  // every device alike).
  const auto& n = calls.per_device;
  if (calls.open.empty() &&
      std::all_of(n.begin(), n.end(), [&](int64_t c) { return c == n[0]; })) {
    Registry().erase(it);
  }
}

}  // namespace pallas_cpu
