#include "launch.h"

#include <sstream>

#include "runtime_context.h"

namespace pallas_cpu {

Launch::Launch(std::vector<PallasCpuRuntimeContext*> contexts, bool mesh)
    : actors_(contexts.size()), mesh_(mesh),
      live_(static_cast<int64_t>(contexts.size())) {
  for (size_t i = 0; i < contexts.size(); ++i) {
    actors_[i].core = static_cast<int64_t>(i);
    actors_[i].ctx = contexts[i];
    contexts[i]->launch = this;
    contexts[i]->actor = &actors_[i];
  }
}

void Launch::Register(Actor* self, int64_t sem_id, int32_t* base,
                      int64_t count) {
  self->semaphores[sem_id] = {base, count};
}

int32_t* Launch::Find(Actor* self, int64_t core, int64_t sem_id,
                      int64_t offset, int64_t grid_index) {
  std::ostringstream os;
  if (!mesh_) {
    os << "semaphore_signal(core_index=" << core << ") at "
       << self->ctx->GridPoint(grid_index)
       << " outside a TensorCore mesh kernel (pl.kernel/pl.core_map over "
          "pltpu.create_tensorcore_mesh) is not supported";
  } else if (core < 0 || core >= num_actors()) {
    os << "semaphore_signal at " << self->ctx->GridPoint(grid_index)
       << " targets core " << core << " but the kernel runs on "
       << num_actors() << (num_actors() == 1 ? " core" : " cores");
  } else {
    const Actor& target = actors_[core];
    auto it = target.semaphores.find(sem_id);
    if (it != target.semaphores.end() && offset >= 0 &&
        offset < it->second.second) {
      return it->second.first + offset;
    }
    os << "semaphore_signal at " << self->ctx->GridPoint(grid_index)
       << ": core " << core << " has no "
       << self->ctx->SemaphoreName(sem_id, offset);
  }
  self->ctx->Fail(os.str());
  return nullptr;
}

void Launch::Enter(Actor* self) {
  // Only the cores of a mesh run at once; chunks of a parallel grid share
  // a pool and may run one after another, so they must not wait for each
  // other.
  if (!mesh_) return;
  auto lock = Lock();
  self->entered = true;
  ++entered_;
  Notify();
  while (entered_ < num_actors() && !Failed()) {
    cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

void Launch::Finish(Actor* self) {
  auto lock = Lock();
  if (!self->entered) {  // failed before entry: no one waits for it
    self->entered = true;
    ++entered_;
  }
  self->done = true;
  --live_;
  DetectDeadlock(nullptr);
  Notify();
}

std::string Launch::Describe(const Actor& a) const {
  std::ostringstream os;
  if (mesh_) os << "core " << a.core << " waits on ";
  os << a.ctx->SemaphoreName(a.waiting.sem_id, a.waiting.offset) << " for "
     << a.waiting.value << " at " << a.ctx->GridPoint(a.waiting.grid_index)
     << " (it holds " << *a.waiting.sem << ")";
  return os.str();
}

bool Launch::DetectDeadlock(Actor* self) {
  if (!mesh_) {
    // Independent actors (chunks of a parallel grid): only the waiting
    // actor itself could satisfy its wait, and it is waiting.
    if (self == nullptr || !self->blocked ||
        *self->waiting.sem >= self->waiting.value) {
      return false;
    }
    std::ostringstream os;
    os << "deadlock: wait on "
       << self->ctx->SemaphoreName(self->waiting.sem_id, self->waiting.offset)
       << " for " << self->waiting.value << " at "
       << self->ctx->GridPoint(self->waiting.grid_index)
       << " can never complete: it holds " << *self->waiting.sem
       << " and no pending DMA or other core can signal it";
    self->ctx->Fail(os.str());
    Notify();
    return true;
  }
  if (live_ == 0 || blocked_ < live_) return false;
  for (const Actor& a : actors_) {
    if (a.done) continue;
    if (!a.blocked || *a.waiting.sem >= a.waiting.value) return false;
  }
  std::ostringstream os;
  if (num_actors() == 1) {
    const Actor& a = actors_[0];
    os << "deadlock: wait on "
       << a.ctx->SemaphoreName(a.waiting.sem_id, a.waiting.offset) << " for "
       << a.waiting.value << " at " << a.ctx->GridPoint(a.waiting.grid_index)
       << " can never complete: it holds " << *a.waiting.sem
       << " and no pending DMA or other core can signal it";
  } else {
    os << "deadlock: every running core waits and none can be signalled:";
    const char* sep = " ";
    for (const Actor& a : actors_) {
      if (a.done) continue;
      os << sep << Describe(a);
      sep = "; ";
    }
    int64_t finished = num_actors() - live_;
    if (finished > 0) os << " (" << finished << " other core(s) finished)";
  }
  // Every waiting actor reports the same proof; the first error wins.
  std::string msg = os.str();
  for (Actor& a : actors_) {
    if (!a.done) a.ctx->Fail(msg);
  }
  Notify();
  return true;
}

}  // namespace pallas_cpu
