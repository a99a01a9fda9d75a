// One kernel invocation across all its actors.
//
// An actor is one TPU core of one device running the kernel entry on a
// thread: a core of a TensorCore mesh, a chunk of a parallel grid dimension,
// or the kernel instance of one device of a shard_map (devices.h finds the
// instances of one launch across the devices' FFI calls).  Every actor's
// semaphores and buffers live in its own memory (generated code registers
// them at entry), and every semaphore operation and DMA goes through the
// launch, under one lock: signals from other actors, remote DMAs, blocking
// waits that sleep (never spin), and the deadlock proof -- every live actor
// waits and nothing in flight can satisfy any wait -- all see one
// consistent state.
#ifndef PALLAS_CPU_LAUNCH_H_
#define PALLAS_CPU_LAUNCH_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "abi.h"
#include "races.h"

namespace pallas_cpu {

class Launch;

// What an actor is blocked on, for deadlock messages.
struct WaitState {
  int32_t* sem = nullptr;
  int32_t value = 0;
  int64_t sem_id = -1;
  int64_t offset = 0;
  int64_t grid_index = 0;
};

// A buffer of an actor that other devices may address (remote DMAs):
// operands first, then the kernel's own allocations, in an order every
// instance of the kernel shares.
struct Region {
  char* base = nullptr;
  int64_t nbytes = 0;
};

struct Actor {
  int64_t index = 0;   // in the launch
  int64_t device = 0;  // logical device id (0 on one device)
  int64_t core = 0;    // core (or parallel chunk) on its device
  PallasCpuRuntimeContext* ctx = nullptr;  // null before it joins, after it left
  // sem_id -> (first semaphore, count) of each array the actor owns.
  std::unordered_map<int64_t, std::pair<int32_t*, int64_t>> semaphores;
  std::vector<Region> regions;
  bool blocked = false;
  bool entered = false;
  bool exiting = false;  // past its grid: it signals nothing any more
  bool left = false;     // its memory is going away
  bool done = false;
  WaitState waiting;
};

class Launch {
 public:
  // `devices` x `cores` actors; `mesh`: the cores are the cores of a
  // TensorCore mesh (messages name them).  Actors join with Attach.
  Launch(int64_t devices, int64_t cores, bool mesh);

  int64_t num_actors() const { return static_cast<int64_t>(actors_.size()); }
  int64_t num_devices() const { return devices_; }
  int64_t cores_per_device() const { return cores_; }
  bool mesh() const { return mesh_; }
  // Whether actors may wait for each other (a mesh, several devices): they
  // then start and end the kernel together and a deadlock needs all of them.
  bool coupled() const { return mesh_ || devices_ > 1; }

  // The lock every semaphore operation of the launch holds.
  std::unique_lock<std::mutex> Lock() { return std::unique_lock<std::mutex>(mu_); }

  // Call with the lock held: wakes waiters (a count changed, an error).
  void Notify() { cv_.notify_all(); }

  // Device `device`'s FFI call brings its cores' contexts (one per core).
  void Attach(int64_t device,
              const std::vector<PallasCpuRuntimeContext*>& contexts);

  void Register(Actor* self, int64_t sem_id, int32_t* base, int64_t count);

  // The actor `core` of `device` (-1: the caller's own device/core), or
  // nullptr after failing the caller with a message saying why (no such
  // device or core, or it has already left the kernel).  `what` names the
  // operation for the message.
  Actor* Target(Actor* self, int64_t device, int64_t core,
                int64_t grid_index, const char* what);
  // The semaphore `offset` of array `sem_id` on `target`; nullptr (and the
  // call fails) when it has no such semaphore.
  int32_t* Find(Actor* self, Actor* target, int64_t sem_id, int64_t offset,
                int64_t grid_index);
  // The address in `target`'s memory of `nbytes` at `addr` in `self`'s
  // (same region, same offset); nullptr (and the call fails) when `addr`
  // is not in one of self's regions.
  char* Translate(Actor* self, Actor* target, const char* addr,
                  int64_t nbytes, int64_t grid_index);

  // Blocks (the lock held by `lock`) until `*sem >= value`.  `run_pending`
  // runs one pending DMA that would signal `sem` and returns whether it
  // did.  Returns false after a deadlock or any actor's failure.
  template <typename RunPending>
  bool Wait(std::unique_lock<std::mutex>& lock, Actor* self,
            const WaitState& wait, RunPending&& run_pending);

  // Sleeps (the lock held by `lock`) until `ready()` -- also after a
  // failure: for conditions that always come true soon (a copy ending).
  template <typename Ready>
  void WaitUntil(std::unique_lock<std::mutex>& lock, Ready&& ready) {
    while (!ready()) cv_.wait_for(lock, std::chrono::milliseconds(50));
  }

  // Kernel entry: the actor has allocated and registered its semaphores
  // and buffers; in a coupled launch, returns once every actor has (or one
  // failed) -- the cores of a TPU, and the devices of a collective, start a
  // kernel together.  Devices that do not arrive within `timeout_ms` fail
  // the launch with a message naming the ones that did.
  void Enter(Actor* self);
  void set_timeout_ms(int64_t ms) { timeout_ms_ = ms; }

  // The end of a coupled kernel, in two steps.  Phase 0, past the grid:
  // the actor signals nothing any more; returns once every actor got there
  // (so exit checks see final counts).  Phase 1, before its memory is
  // freed: returns once every actor has finished its exit checks (no DMA or
  // signal can reach freed memory).  After any failure neither waits.
  void ExitBarrier(Actor* self, int phase);

  // The actor's kernel returned: it will signal nothing any more.
  void Finish(Actor* self);

  // Any actor failed: the others stop waiting.  Callable without the lock.
  // Keeps the first message of the launch (the call's error).
  void NoteFailure(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(first_mu_);
      if (first_error_.empty()) first_error_ = message;
    }
    failed_.store(true, std::memory_order_release);
    cv_.notify_all();
  }
  std::string FirstError() {
    std::lock_guard<std::mutex> lock(first_mu_);
    return first_error_;
  }
  bool Failed() const { return failed_.load(std::memory_order_acquire); }

  Actor* actor(int64_t i) { return &actors_[i]; }
  Actor* actor(int64_t device, int64_t core) {
    return &actors_[device * cores_ + core];
  }
  std::vector<Actor>& actors() { return actors_; }

  // "core 1", "device 2", "device 2 core 1", or "" (one actor, one device).
  std::string ActorName(const Actor& a) const;

  // -- race detection (the instrumented build; races.h) -----------------
  // With the lock held throughout.  `races()` is null unless enabled.
  void EnableRaces(bool raise_on_race);
  RaceDetector* races() { return races_.get(); }
  // An access of `window` by actor `self` (or, `dma` >= 0, by that DMA).
  void RaceAccess(Actor* self, int32_t dma, const char* base,
                  const std::vector<int64_t>& sizes,
                  const std::vector<int64_t>& strides, int64_t elem_bytes,
                  bool write, int64_t site, int64_t grid_index);
  void NoteDmaStarter(int32_t dma, int64_t starter) {
    dma_starters_[dma] = starter;
  }
  // The races found, formatted like TPU interpret mode's reports.
  std::vector<RaceReport> TakeRaceReports() { return std::move(reports_); }

 private:
  // With the lock held: if every live actor is blocked on a wait nothing
  // can satisfy, fails every actor with a message naming each wait.
  bool DetectDeadlock(Actor* self);
  // With the lock held: a DMA not yet copied would signal `sem`.
  bool PendingFor(const int32_t* sem) const;
  std::string Describe(const Actor& a) const;
  // Waits (the lock held) until `ready()` or a failure; false on timeout.
  template <typename Ready>
  bool Await(std::unique_lock<std::mutex>& lock, Ready&& ready,
             int64_t timeout_ms);
  std::string MissingDevices() const;
  // A barrier completed: every actor's clock joins every other's.
  void JoinAllClocks();
  std::string DescribeAccess(const AccessRecord& a);

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Actor> actors_;
  int64_t devices_;
  int64_t cores_;
  bool mesh_;
  int64_t live_;
  int64_t blocked_ = 0;
  int64_t entered_ = 0;
  int64_t exited_[2] = {0, 0};
  int64_t timeout_ms_ = 20000;
  std::unique_ptr<RaceDetector> races_;
  bool raise_on_race_ = false;
  std::vector<RaceReport> reports_;
  std::unordered_map<int32_t, int64_t> dma_starters_;
  std::atomic<bool> failed_{false};
  std::mutex first_mu_;
  std::string first_error_;
};

template <typename RunPending>
bool Launch::Wait(std::unique_lock<std::mutex>& lock, Actor* self,
                  const WaitState& wait, RunPending&& run_pending) {
  while (*wait.sem < wait.value) {
    if (Failed()) return false;
    if (run_pending()) continue;
    self->blocked = true;
    self->waiting = wait;
    ++blocked_;
    if (DetectDeadlock(self)) {
      self->blocked = false;
      --blocked_;
      return false;
    }
    // Signals and deadlock checks happen under the lock, so they are never
    // missed; a failure elsewhere may be noted without it (errors are
    // reported from anywhere), which the timeout bounds.  It sleeps.
    cv_.wait_for(lock, std::chrono::milliseconds(50));
    self->blocked = false;
    --blocked_;
  }
  return !Failed();
}

}  // namespace pallas_cpu

#endif  // PALLAS_CPU_LAUNCH_H_
