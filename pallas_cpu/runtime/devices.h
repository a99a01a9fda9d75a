// The rendezvous of a kernel's instances across devices.
//
// Inside shard_map every device runs its own instance of the compiled kernel
// in its own FFI call, at the same time (XLA's CPU client runs the devices'
// programs concurrently).  The instances of one launch find each other by
// what XLA gives every device of one execution -- its run id -- with the
// kernel id, counting the kernel's calls per device: the n-th call of a
// kernel on each device of a run is one launch.  No pointer passes through
// the HLO and there is no lock around the kernel: each launch has its own.
#ifndef PALLAS_CPU_DEVICES_H_
#define PALLAS_CPU_DEVICES_H_

#include <cstdint>
#include <memory>
#include <string_view>

#include "launch.h"

namespace pallas_cpu {

// Device `device`'s next call of kernel `kernel_id` in run `run_id`: the
// launch all `devices` devices of that call share (created by the first to
// arrive).  Pair with LeaveLaunch.
std::shared_ptr<Launch> JoinLaunch(int64_t run_id, std::string_view kernel_id,
                                   int64_t device, int64_t devices,
                                   int64_t cores, bool mesh);
// Device `device`'s call returned; the last one forgets the launch.
void LeaveLaunch(int64_t run_id, std::string_view kernel_id,
                 const std::shared_ptr<Launch>& launch);

}  // namespace pallas_cpu

#endif  // PALLAS_CPU_DEVICES_H_
