#include "launch.h"

#include <sstream>

#include "runtime_context.h"

namespace pallas_cpu {

Launch::Launch(int64_t devices, int64_t cores, bool mesh)
    : actors_(devices * cores), devices_(devices), cores_(cores), mesh_(mesh),
      live_(devices * cores) {
  for (int64_t i = 0; i < num_actors(); ++i) {
    actors_[i].index = i;
    actors_[i].device = i / cores;
    actors_[i].core = i % cores;
  }
}

void Launch::Attach(int64_t device,
                    const std::vector<PallasCpuRuntimeContext*>& contexts) {
  auto lock = Lock();
  for (int64_t c = 0; c < cores_; ++c) {
    Actor* a = actor(device, c);
    a->ctx = contexts[c];
    contexts[c]->launch = this;
    contexts[c]->actor = a;
  }
}

std::string Launch::ActorName(const Actor& a) const {
  std::ostringstream os;
  if (devices_ > 1) os << "device " << a.device;
  if (mesh_) os << (devices_ > 1 ? " " : "") << "core " << a.core;
  return os.str();
}

void Launch::Register(Actor* self, int64_t sem_id, int32_t* base,
                      int64_t count) {
  self->semaphores[sem_id] = {base, count};
}

Actor* Launch::Target(Actor* self, int64_t device, int64_t core,
                      int64_t grid_index, const char* what) {
  std::ostringstream os;
  if (device < 0) device = self->device;
  if (core < 0) core = self->core;
  if (core != self->core && !mesh_) {
    os << what << "(core_index=" << core << ") at "
       << self->ctx->GridPoint(grid_index)
       << " outside a TensorCore mesh kernel (pl.kernel/pl.core_map over "
          "pltpu.create_tensorcore_mesh) is not supported";
  } else if (device >= devices_) {
    os << what << " at " << self->ctx->GridPoint(grid_index)
       << " targets device " << device << " but the kernel runs on "
       << devices_ << (devices_ == 1 ? " device" : " devices");
  } else if (core >= cores_) {
    os << what << " at " << self->ctx->GridPoint(grid_index)
       << " targets core " << core << " but the kernel runs on " << cores_
       << (cores_ == 1 ? " core" : " cores");
  } else {
    Actor* target = actor(device, core);
    if (!target->left && target->ctx != nullptr) return target;
    os << what << " at " << self->ctx->GridPoint(grid_index) << " targets "
       << ActorName(*target) << ", which has already left the kernel";
  }
  self->ctx->Fail(os.str());
  return nullptr;
}

int32_t* Launch::Find(Actor* self, Actor* target, int64_t sem_id,
                      int64_t offset, int64_t grid_index) {
  auto it = target->semaphores.find(sem_id);
  if (it != target->semaphores.end() && offset >= 0 &&
      offset < it->second.second) {
    return it->second.first + offset;
  }
  std::ostringstream os;
  os << "semaphore_signal at " << self->ctx->GridPoint(grid_index) << ": "
     << ActorName(*target) << " has no "
     << self->ctx->SemaphoreName(sem_id, offset);
  self->ctx->Fail(os.str());
  return nullptr;
}

char* Launch::Translate(Actor* self, Actor* target, const char* addr,
                        int64_t nbytes, int64_t grid_index) {
  const auto& mine = self->regions;
  for (size_t r = 0; r < mine.size(); ++r) {
    const Region& m = mine[r];
    if (addr >= m.base && addr + nbytes <= m.base + m.nbytes) {
      if (r < target->regions.size() &&
          target->regions[r].nbytes == m.nbytes) {
        return target->regions[r].base + (addr - m.base);
      }
      break;
    }
  }
  std::ostringstream os;
  os << "remote DMA at " << self->ctx->GridPoint(grid_index)
     << ": its destination is not a kernel operand or buffer that "
     << ActorName(*target) << " has too";
  self->ctx->Fail(os.str());
  return nullptr;
}

template <typename Ready>
bool Launch::Await(std::unique_lock<std::mutex>& lock, Ready&& ready,
                   int64_t timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(timeout_ms);
  while (!ready() && !Failed()) {
    if (timeout_ms > 0 && std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
  return true;
}

std::string Launch::MissingDevices() const {
  std::ostringstream arrived, missing;
  int64_t n_arrived = 0;
  for (int64_t d = 0; d < devices_; ++d) {
    bool in = true;
    for (int64_t c = 0; c < cores_; ++c) {
      in = in && actors_[d * cores_ + c].entered;
    }
    std::ostringstream& os = in ? arrived : missing;
    os << (os.tellp() > 0 ? ", " : "") << d;
    n_arrived += in;
  }
  std::ostringstream os;
  os << "device(s) " << missing.str() << " of " << devices_
     << " never started the kernel (arrived: "
     << (n_arrived ? arrived.str() : "none") << ")";
  return os.str();
}

void Launch::Enter(Actor* self) {
  // Only coupled actors run at once; chunks of a parallel grid share a
  // pool and may run one after another, so they must not wait for each
  // other.
  if (!coupled()) return;
  auto lock = Lock();
  self->entered = true;
  ++entered_;
  Notify();
  // The cores of one device start together (their threads are spawned
  // here); other devices arrive when XLA runs their part of the program.
  if (entered_ == num_actors()) JoinAllClocks();
  int64_t timeout = devices_ > 1 ? timeout_ms_ : 0;
  if (!Await(lock, [&] { return entered_ == num_actors(); }, timeout)) {
    std::ostringstream os;
    os << "timed out after " << timeout_ms_ / 1000.0
       << " s waiting for every device to enter the kernel: "
       << MissingDevices()
       << "; every device of the shard_map must run it (the timeout is "
          "CompilerParams(device_timeout_s=...))";
    self->ctx->Fail(os.str());
  }
}

void Launch::ExitBarrier(Actor* self, int phase) {
  if (!coupled()) return;
  auto lock = Lock();
  if (phase == 0) {
    if (!self->exiting) {
      self->exiting = true;
      --live_;
      DetectDeadlock(nullptr);  // the others may now wait on nothing
    }
  } else {
    self->left = true;
  }
  ++exited_[phase];
  if (exited_[phase] == num_actors()) JoinAllClocks();
  Notify();
  Await(lock, [&] { return exited_[phase] == num_actors(); }, 0);
}

void Launch::Finish(Actor* self) {
  auto lock = Lock();
  if (!self->entered) {  // failed before entry: no one waits for it
    self->entered = true;
    ++entered_;
  }
  if (!self->exiting) {
    self->exiting = true;
    --live_;
  }
  self->left = true;
  self->done = true;
  self->ctx = nullptr;
  DetectDeadlock(nullptr);
  Notify();
}

void Launch::JoinAllClocks() {
  if (races_ == nullptr) return;
  std::vector<int32_t> all(num_actors());
  for (int64_t i = 0; i < num_actors(); ++i) all[i] = static_cast<int32_t>(i);
  races_->JoinAll(all);
}

void Launch::EnableRaces(bool raise_on_race) {
  if (races_ == nullptr) races_ = std::make_unique<RaceDetector>(num_actors());
  raise_on_race_ = raise_on_race;
}

std::string Launch::DescribeAccess(const AccessRecord& a) {
  // Any actor's context names sites and grid points (one kernel).
  const PallasCpuRuntimeContext* ctx = nullptr;
  for (const Actor& x : actors_) {
    if (x.ctx != nullptr) ctx = x.ctx;
  }
  std::ostringstream os;
  auto who = [&](int64_t actor) {
    std::string name = ActorName(actors_[actor]);
    if (!name.empty()) return name;
    // The chunks of a parallel grid dimension are the cores it is split
    // over (CompilerParams(num_cores)).
    return cores_ > 1 ? "core " + std::to_string(actors_[actor].core)
                      : std::string("the kernel");
  };
  if (races_->IsDma(a.actor)) {
    auto it = dma_starters_.find(a.actor);
    os << "the DMA that " << (it == dma_starters_.end() ? "the kernel"
                                                         : who(it->second))
       << " started at ";
  } else {
    os << who(a.actor) << " at ";
  }
  if (ctx != nullptr) {
    os << ctx->GridPoint(a.grid) << " (" << ctx->Site(a.site) << ")";
  } else {
    os << "grid index " << a.grid << " (site #" << a.site << ")";
  }
  return os.str();
}

void Launch::RaceAccess(Actor* self, int32_t dma, const char* base,
                        const std::vector<int64_t>& sizes,
                        const std::vector<int64_t>& strides,
                        int64_t elem_bytes, bool write, int64_t site,
                        int64_t grid_index) {
  if (races_ == nullptr) return;
  size_t before = reports_.size();
  races_->Access(dma >= 0 ? dma : static_cast<int32_t>(self->index), base,
                 sizes, strides, elem_bytes, write, static_cast<int32_t>(site),
                 grid_index,
                 [&](const AccessRecord& a) { return DescribeAccess(a); },
                 &reports_);
  if (raise_on_race_ && reports_.size() > before) {
    const RaceReport& r = reports_[before];
    std::string msg = "race detected (" + r.kind + ") on " + r.buffer +
                      ": " + r.earlier + ", then " + r.later;
    // A DMA's access fails the actor that started it.
    if (self == nullptr) {
      auto it = dma_starters_.find(dma);
      if (it != dma_starters_.end()) self = &actors_[it->second];
    }
    if (self != nullptr && self->ctx != nullptr) {
      self->ctx->Fail(msg);
    } else {
      NoteFailure(msg);
    }
  }
}

std::string Launch::Describe(const Actor& a) const {
  std::ostringstream os;
  std::string name = ActorName(a);
  if (!name.empty()) os << name << " waits on ";
  os << a.ctx->SemaphoreName(a.waiting.sem_id, a.waiting.offset) << " for "
     << a.waiting.value << " at " << a.ctx->GridPoint(a.waiting.grid_index)
     << " (it holds " << *a.waiting.sem << ")";
  return os.str();
}

bool Launch::PendingFor(const int32_t* sem) const {
  for (const Actor& a : actors_) {
    if (a.ctx == nullptr) continue;
    for (const Dma& dma : a.ctx->dmas) {
      if (!dma.landed && (dma.sem == sem || dma.send_sem == sem)) return true;
    }
  }
  return false;
}

bool Launch::DetectDeadlock(Actor* self) {
  if (!coupled()) {
    // Independent actors (chunks of a parallel grid): only the waiting
    // actor itself could satisfy its wait, and it is waiting.
    if (self == nullptr || !self->blocked ||
        *self->waiting.sem >= self->waiting.value ||
        PendingFor(self->waiting.sem)) {
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
  int64_t waiting = 0;
  for (const Actor& a : actors_) {
    if (a.exiting) continue;
    if (a.ctx == nullptr || !a.blocked || *a.waiting.sem >= a.waiting.value ||
        PendingFor(a.waiting.sem)) {
      return false;
    }
    ++waiting;
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
    const char* who = devices_ > 1 ? "device" : "core";
    os << "deadlock: every running " << who << " waits and none can be "
       << "signalled:";
    const char* sep = " ";
    for (const Actor& a : actors_) {
      if (a.exiting) continue;
      os << sep << Describe(a);
      sep = "; ";
    }
    int64_t finished = num_actors() - waiting;
    if (finished > 0) {
      os << " (" << finished << " other " << who << "(s) finished the kernel)";
    }
  }
  // Every waiting actor reports the same proof; the first error wins.
  std::string msg = os.str();
  for (Actor& a : actors_) {
    if (!a.exiting && a.ctx != nullptr) a.ctx->Fail(msg);
  }
  Notify();
  return true;
}

}  // namespace pallas_cpu
