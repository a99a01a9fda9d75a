// One kernel invocation across all its actors.
//
// An actor is one TPU core running the kernel entry on its own thread (a
// core of a TensorCore mesh, or a chunk of a parallel grid dimension); the
// devices of a shard_map will be actors of the same launch.  Every actor's
// semaphores live in its own memory (generated code registers them at
// entry), and every semaphore operation goes through the launch, under one
// lock: signals from other actors, blocking waits that sleep (never spin),
// and the deadlock proof -- every live actor waits and no wait can be
// satisfied by a pending DMA -- all see one consistent state.
#ifndef PALLAS_CPU_LAUNCH_H_
#define PALLAS_CPU_LAUNCH_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "abi.h"

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

struct Actor {
  int64_t core = 0;
  PallasCpuRuntimeContext* ctx = nullptr;
  // sem_id -> (first semaphore, count) of each array the actor owns.
  std::unordered_map<int64_t, std::pair<int32_t*, int64_t>> semaphores;
  bool blocked = false;
  bool entered = false;
  bool done = false;
  WaitState waiting;
};

class Launch {
 public:
  // `mesh`: the actors are the cores of a mesh (messages name the core).
  Launch(std::vector<PallasCpuRuntimeContext*> contexts, bool mesh);

  int64_t num_actors() const { return static_cast<int64_t>(actors_.size()); }
  bool mesh() const { return mesh_; }

  // The lock every semaphore operation of the launch holds.
  std::unique_lock<std::mutex> Lock() { return std::unique_lock<std::mutex>(mu_); }

  // Call with the lock held: wakes waiters (a count changed, an error).
  void Notify() { cv_.notify_all(); }

  void Register(Actor* self, int64_t sem_id, int32_t* base, int64_t count);
  // The semaphore `offset` of array `sem_id` on core `core`; nullptr (and
  // the call fails) when that core or array does not exist.
  int32_t* Find(Actor* self, int64_t core, int64_t sem_id, int64_t offset,
                int64_t grid_index);

  // Blocks (the lock held by `lock`) until `*sem >= value`.  `run_pending`
  // runs one pending DMA that would signal `sem` and returns whether it
  // did.  Returns false after a deadlock or any actor's failure.
  template <typename RunPending>
  bool Wait(std::unique_lock<std::mutex>& lock, Actor* self,
            const WaitState& wait, RunPending&& run_pending);

  // Kernel entry: the actor has allocated and registered its semaphores;
  // returns once every actor has (or one failed) -- the cores of a TPU
  // start a kernel together.
  void Enter(Actor* self);

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

  Actor* actor(int64_t i) { return &actors_[i]; }

 private:
  bool Failed() const { return failed_.load(std::memory_order_acquire); }
  // With the lock held: if every live actor is blocked on a wait nothing
  // can satisfy, fails every actor with a message naming each wait.
  bool DetectDeadlock(Actor* self);
  std::string Describe(const Actor& a) const;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Actor> actors_;
  bool mesh_;
  int64_t live_;
  int64_t blocked_ = 0;
  int64_t entered_ = 0;
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
