// Local DMAs and semaphores, single core.
//
// Semantics per semaphore type, as Mosaic defines them: a DMA completing on
// a DMA semaphore adds the bytes it copied, and its wait takes them back; a
// DMA completing on a REGULAR semaphore (TPU v6+) adds 1 -- one completion
// -- and `semaphore_wait(sem)` or the copy's wait takes that 1.
//
// In "on_wait" mode a started DMA runs only when a wait on its semaphore
// needs it (newest first, as TPU interpret mode does), which exposes kernels
// that read a DMA's destination before waiting.  Semaphores are updated
// under the launch's lock (launch.h); a wait that no actor can satisfy is
// reported as a deadlock instead of hanging.
//
// Every DMA is tracked from its start until waits consume its completion,
// so that a DMA that outlives a buffer it reads or writes (a run_scoped
// scope ends before its wait), and semaphores or DMAs left over at kernel
// exit, are reported with the DMA's source line instead of touching freed
// memory or passing silently.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <list>
#include <new>
#include <sstream>
#include <utility>

#include "abi.h"
#include "launch.h"
#include "runtime_context.h"

namespace pallas_cpu {
namespace {

StridedWindow FromDescriptor(int64_t rank, void* desc, int64_t elem_bytes) {
  auto* words = static_cast<int64_t*>(desc);
  StridedWindow w;
  char* aligned = reinterpret_cast<char*>(words[1]);
  w.base = aligned + words[2] * elem_bytes;
  w.sizes.assign(words + 3, words + 3 + rank);
  w.strides.assign(words + 3 + rank, words + 3 + 2 * rank);
  return w;
}

void CopyRec(const StridedWindow& src, const StridedWindow& dst, size_t dim,
             const char* s, char* d, int64_t elem_bytes) {
  const int64_t n = src.sizes[dim];
  if (dim + 1 == src.sizes.size()) {
    if (src.strides[dim] == 1 && dst.strides[dim] == 1) {
      std::memmove(d, s, n * elem_bytes);
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      std::memmove(d + i * dst.strides[dim] * elem_bytes,
                   s + i * src.strides[dim] * elem_bytes, elem_bytes);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    CopyRec(src, dst, dim + 1, s + i * src.strides[dim] * elem_bytes,
            d + i * dst.strides[dim] * elem_bytes, elem_bytes);
  }
}

Extent ExtentOf(const StridedWindow& w, int64_t elem_bytes) {
  const char* lo = w.base;
  const char* hi = w.base;
  for (size_t d = 0; d < w.sizes.size(); ++d) {
    if (w.sizes[d] == 0) return {w.base, w.base - 1};  // empty
    int64_t reach = (w.sizes[d] - 1) * w.strides[d] * elem_bytes;
    (reach < 0 ? lo : hi) += reach;
  }
  return {lo, hi + elem_bytes - 1};
}

StridedWindow Contiguous(char* base, const std::vector<int64_t>& sizes) {
  StridedWindow w;
  w.base = base;
  w.sizes = sizes;
  w.strides.assign(sizes.size(), 1);
  for (size_t d = sizes.size(); d-- > 1;) {
    w.strides[d - 1] = w.strides[d] * sizes[d];
  }
  return w;
}

// Calls `op(element)` for each element of `w` outside its leading box
// `keep` (per dimension, the first keep[d] indices): the destination's part
// of a DMA that reads its source's tile padding.
template <typename Op>
void ForEachOutside(const StridedWindow& w, const std::vector<int64_t>& keep,
                    size_t dim, char* p, bool inside, int64_t elem_bytes,
                    Op op) {
  const int64_t n = w.sizes[dim];
  const int64_t step = w.strides[dim] * elem_bytes;
  if (dim + 1 == w.sizes.size()) {
    for (int64_t i = inside ? keep[dim] : 0; i < n; ++i) op(p + i * step);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    ForEachOutside(w, keep, dim + 1, p + i * step, inside && i < keep[dim],
                   elem_bytes, op);
  }
}

// -- accumulating DMAs (add=True) ---------------------------------------------
template <typename T>
T LoadAs(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void StoreAs(char* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  return LoadAs<float>(reinterpret_cast<const char*>(&bits));
}

uint16_t F32ToBf16(float f) {  // round to nearest even; NaNs stay quiet NaNs
  uint32_t u = LoadAs<uint32_t>(reinterpret_cast<const char*>(&f));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    float v = std::ldexp(static_cast<float>(m), -24);  // zero or subnormal
    return sign ? -v : v;
  }
  uint32_t bits = e == 31 ? sign | 0x7f800000u | (m << 13)
                          : sign | ((e + 112u) << 23) | (m << 13);
  return LoadAs<float>(reinterpret_cast<const char*>(&bits));
}

uint16_t F32ToF16(float value) {  // round to nearest even (F. Giesen's)
  const uint32_t f32_inf = 255u << 23, f16_max = (127u + 16u) << 23;
  const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t f = LoadAs<uint32_t>(reinterpret_cast<const char*>(&value));
  uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= f16_max) {
    o = f > f32_inf ? 0x7e00 : 0x7c00;  // NaN stays NaN, overflow is inf
  } else if (f < (113u << 23)) {  // a subnormal f16 (or zero)
    float fv = LoadAs<float>(reinterpret_cast<const char*>(&f)) +
               LoadAs<float>(reinterpret_cast<const char*>(&denorm_magic));
    o = static_cast<uint16_t>(
        LoadAs<uint32_t>(reinterpret_cast<const char*>(&fv)) - denorm_magic);
  } else {
    uint32_t odd = (f >> 13) & 1u;
    f -= 112u << 23;  // rebias the exponent
    f += 0xfffu + odd;
    o = static_cast<uint16_t>(f >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

// dst += src for one element of each kind.
struct AddF32 {
  void operator()(char* d, const char* s) const {
    StoreAs(d, LoadAs<float>(d) + LoadAs<float>(s));
  }
};
struct AddF64 {
  void operator()(char* d, const char* s) const {
    StoreAs(d, LoadAs<double>(d) + LoadAs<double>(s));
  }
};
struct AddBf16 {
  void operator()(char* d, const char* s) const {
    StoreAs(d, F32ToBf16(Bf16ToF32(LoadAs<uint16_t>(d)) +
                         Bf16ToF32(LoadAs<uint16_t>(s))));
  }
};
struct AddF16 {
  void operator()(char* d, const char* s) const {
    StoreAs(d, F32ToF16(F16ToF32(LoadAs<uint16_t>(d)) +
                        F16ToF32(LoadAs<uint16_t>(s))));
  }
};
template <typename U>  // an unsigned type: wrapping two's complement
struct AddInt {
  void operator()(char* d, const char* s) const {
    StoreAs(d, static_cast<U>(LoadAs<U>(d) + LoadAs<U>(s)));
  }
};

template <typename Op>
void AddRec(const StridedWindow& src, const StridedWindow& dst, size_t dim,
            const char* s, char* d, int64_t elem_bytes, Op op) {
  const int64_t n = src.sizes[dim];
  const int64_t ss = src.strides[dim] * elem_bytes;
  const int64_t ds = dst.strides[dim] * elem_bytes;
  if (dim + 1 == src.sizes.size()) {
    for (int64_t i = 0; i < n; ++i) op(d + i * ds, s + i * ss);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    AddRec(src, dst, dim + 1, s + i * ss, d + i * ds, elem_bytes, op);
  }
}

template <typename Op>
void AddWindows(const StridedWindow& src, const StridedWindow& dst,
                int64_t elem_bytes, Op op) {
  if (src.sizes.empty()) {
    op(dst.base, src.base);
  } else {
    AddRec(src, dst, 0, src.base, dst.base, elem_bytes, op);
  }
}

void AddWindows(const StridedWindow& src, const StridedWindow& dst,
                int64_t elem_bytes, int64_t kind) {
  switch (kind) {
    case kPallasCpuDmaAddF32: return AddWindows(src, dst, elem_bytes, AddF32{});
    case kPallasCpuDmaAddF64: return AddWindows(src, dst, elem_bytes, AddF64{});
    case kPallasCpuDmaAddBf16:
      return AddWindows(src, dst, elem_bytes, AddBf16{});
    case kPallasCpuDmaAddF16: return AddWindows(src, dst, elem_bytes, AddF16{});
    default:
      switch (elem_bytes) {
        case 1: return AddWindows(src, dst, elem_bytes, AddInt<uint8_t>{});
        case 2: return AddWindows(src, dst, elem_bytes, AddInt<uint16_t>{});
        case 4: return AddWindows(src, dst, elem_bytes, AddInt<uint32_t>{});
        default: return AddWindows(src, dst, elem_bytes, AddInt<uint64_t>{});
      }
  }
}

// Copies the part of a DMA inside both arrays (all of it, without tile
// padding).
void CopyBox(const Dma& dma) {
  if (dma.add != kPallasCpuDmaCopy) {
    const int64_t n = dma.src.NumElements();
    if (n == 0) return;
    Extent s = ExtentOf(dma.src, dma.elem_bytes);
    Extent d = ExtentOf(dma.dst, dma.elem_bytes);
    if (!dma.src.sizes.empty() && s.lo <= d.hi && d.lo <= s.hi) {
      // Overlapping windows: the source as it was before any element is
      // added, as for a copy.
      std::vector<char> staging(n * dma.elem_bytes);
      StridedWindow tmp = Contiguous(staging.data(), dma.src.sizes);
      CopyRec(dma.src, tmp, 0, dma.src.base, tmp.base, dma.elem_bytes);
      AddWindows(tmp, dma.dst, dma.elem_bytes, dma.add);
    } else {
      AddWindows(dma.src, dma.dst, dma.elem_bytes, dma.add);
    }
    return;
  }
  const int64_t n = dma.src.NumElements();
  if (dma.src.sizes.empty()) {
    std::memmove(dma.dst.base, dma.src.base, dma.elem_bytes);
  } else if (n > 0) {
    Extent s = ExtentOf(dma.src, dma.elem_bytes);
    Extent d = ExtentOf(dma.dst, dma.elem_bytes);
    if (s.lo <= d.hi && d.lo <= s.hi) {
      // Overlapping windows (aliased operands): read everything first, as
      // interpret mode does, then write.
      std::vector<char> staging(n * dma.elem_bytes);
      StridedWindow tmp = Contiguous(staging.data(), dma.src.sizes);
      CopyRec(dma.src, tmp, 0, dma.src.base, tmp.base, dma.elem_bytes);
      CopyRec(tmp, dma.dst, 0, tmp.base, dma.dst.base, dma.elem_bytes);
    } else {
      CopyRec(dma.src, dma.dst, 0, dma.src.base, dma.dst.base, dma.elem_bytes);
    }
  }
}

// Copies a DMA's data (no launch state touched): the part inside both
// arrays, then, where the source's tile padding is read, the uninitialized
// value `fill` -- stored, or added by an accumulating DMA.  Throws
// std::bad_alloc when an overlapping copy cannot get its staging buffer.
void CopyData(const Dma& dma) {
  CopyBox(dma);
  if (dma.pad_dst.sizes.empty()) return;
  const char* fill = reinterpret_cast<const char*>(&dma.fill);  // LE bytes
  const int64_t eb = dma.elem_bytes;
  if (dma.add == kPallasCpuDmaCopy) {
    ForEachOutside(dma.pad_dst, dma.dst.sizes, 0, dma.pad_dst.base, true, eb,
                   [&](char* d) { std::memcpy(d, fill, eb); });
    return;
  }
  ForEachOutside(dma.pad_dst, dma.dst.sizes, 0, dma.pad_dst.base, true, eb,
                 [&](char* d) {
                   StridedWindow s, t;
                   s.base = const_cast<char*>(fill);
                   t.base = d;
                   AddWindows(s, t, eb, dma.add);
                 });
}

// Copies of at least this many bytes release the launch's lock while they
// run, so the devices and cores of a launch copy in parallel.
constexpr int64_t kUnlockedCopyBytes = 64 * 1024;

// Runs a DMA: its race-detector accesses, the copy, then the signals of its
// semaphores.  With `lock` (the launch's, held), a large copy runs with the
// lock released: the DMA is `busy` meanwhile -- no one else runs it, and
// queues wait before dropping it.  Throws std::bad_alloc (see CopyData).
void Execute(Launch* launch, Dma& dma,
             std::unique_lock<std::mutex>* lock = nullptr) {
  if (launch->races() != nullptr) {
    // The DMA's own actor reads the source and writes the destination,
    // ordered after its start and before the waits on its completion.
    launch->RaceAccess(nullptr, dma.race_actor, dma.src.base, dma.src.sizes,
                       dma.src.strides, dma.elem_bytes, false, dma.site,
                       dma.grid_index);
    const StridedWindow& written = dma.written();
    launch->RaceAccess(nullptr, dma.race_actor, written.base, written.sizes,
                       written.strides, dma.elem_bytes, true, dma.site,
                       dma.grid_index);
    launch->races()->CompleteDma(dma.race_actor, dma.sem);
    if (dma.send_sem != nullptr) {
      launch->races()->CompleteDma(dma.race_actor, dma.send_sem);
    }
  }
  // (An accumulating DMA keeps the lock: its read-modify-write of the
  // destination is atomic towards every other DMA and core.)
  if (lock != nullptr && dma.add == kPallasCpuDmaCopy &&
      dma.src.NumElements() * dma.elem_bytes >= kUnlockedCopyBytes) {
    dma.busy = true;
    lock->unlock();
    try {
      CopyData(dma);
    } catch (...) {
      lock->lock();
      dma.busy = false;
      launch->Notify();
      throw;
    }
    lock->lock();
    dma.busy = false;
  } else {
    CopyData(dma);
  }
  *dma.sem += dma.units;
  if (dma.send_sem != nullptr) *dma.send_sem += dma.units;
  dma.landed = true;
  launch->Notify();
}

// Calls fn(queue) for the DMA queue of every actor of ctx's launch still in
// the kernel (a wait may need a DMA another actor started: a remote copy
// into this device, or one that signals this core's semaphore).
template <typename Fn>
void ForEachQueue(PallasCpuRuntimeContext* ctx, Fn&& fn) {
  for (Actor& a : ctx->launch->actors()) {
    if (a.ctx != nullptr) fn(a.ctx->dmas);
  }
}

// Runs the newest pending DMA signalling `sem` (its write's or, for a
// remote one, its read's completion); false if there is none.
bool RunOnePendingFor(PallasCpuRuntimeContext* ctx, int32_t* sem,
                      std::unique_lock<std::mutex>* lock) {
  Dma* next = nullptr;
  ForEachQueue(ctx, [&](std::list<Dma>& q) {
    for (auto it = q.rbegin(); next == nullptr && it != q.rend(); ++it) {
      if (!it->landed && !it->busy &&
          (it->sem == sem || it->send_sem == sem)) {
        next = &*it;
      }
    }
  });
  if (next == nullptr) return false;
  Execute(ctx->launch, *next, lock);
  return true;
}

// A wait took `value` from `sem`: the oldest landed DMAs on it are waited
// for (as far as the value goes) and forgotten once both their halves are.
void Consume(PallasCpuRuntimeContext* ctx, int32_t* sem, int32_t value) {
  ForEachQueue(ctx, [&](std::list<Dma>& q) {
    for (auto it = q.begin(); it != q.end() && value > 0;) {
      int32_t* left = it->sem == sem        ? &it->unwaited
                      : it->send_sem == sem ? &it->send_unwaited
                                            : nullptr;
      if (left == nullptr || !it->landed || *left == 0) {
        ++it;
        continue;
      }
      int32_t take = std::min(*left, value);
      *left -= take;
      value -= take;
      if (it->unwaited == 0 && it->send_unwaited == 0) {
        if (ctx->launch->races() != nullptr) {
          ctx->launch->races()->RetireDma(it->race_actor);
        }
        it = q.erase(it);
      } else {
        ++it;
      }
    }
  });
}

std::string DmaName(const PallasCpuRuntimeContext* ctx, const Dma& dma) {
  std::ostringstream os;
  os << "DMA started at " << ctx->GridPoint(dma.grid_index) << " ("
     << ctx->Site(dma.site) << ")";
  return os.str();
}

// Records a kernel-exit finding: the call's error, or a warning.
void Report(PallasCpuRuntimeContext* ctx, int64_t mode, std::string msg) {
  if (mode == 0) {
    ctx->Fail(std::move(msg));
  } else if (mode == 1) {
    ctx->warnings.push_back(std::move(msg));
  }
}

// Runs `fn`; a std::bad_alloc becomes the call's error (no exception may
// cross the generated code).
template <typename Fn>
void Guarded(PallasCpuRuntimeContext* ctx, const char* what, Fn&& fn) {
  try {
    fn();
  } catch (const std::bad_alloc&) {
    ctx->Fail(std::string("out of memory in ") + what);
  }
}

}  // namespace

void WaitForIdleDmas(PallasCpuRuntimeContext* ctx,
                     std::unique_lock<std::mutex>& lock) {
  ctx->launch->WaitUntil(lock, [&] {
    bool busy = false;
    ForEachQueue(ctx, [&](std::list<Dma>& q) {
      for (const Dma& d : q) busy = busy || d.busy;
    });
    return !busy;
  });
}

// Narrows a DMA whose windows reach into tile padding (abi.h, `pad`: `pad`
// is its descriptor, read as a window of i64) to the part it copies, and
// keeps the destination's valid part and the fill for the rest.
static void PadDma(Dma& dma, const StridedWindow& pad) {
  if (pad.sizes.empty() || pad.sizes[0] == 0) return;
  const auto* words = reinterpret_cast<const int64_t*>(pad.base);
  const size_t rank = dma.src.sizes.size();
  dma.fill = static_cast<uint64_t>(words[0]);
  dma.pad_dst = dma.dst;
  for (size_t d = 0; d < rank; ++d) {
    const int64_t src_valid = words[1 + d], dst_valid = words[1 + rank + d];
    dma.pad_dst.sizes[d] = dst_valid;
    dma.src.sizes[d] = dma.dst.sizes[d] = std::min(src_valid, dst_valid);
  }
}

int64_t StridedWindow::NumElements() const {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

}  // namespace pallas_cpu

using pallas_cpu::Actor;
using pallas_cpu::Dma;

extern "C" void pallas_cpu_rt_dma_start(
    PallasCpuRuntimeContext* ctx, int64_t src_rank, void* src_desc,
    int64_t dst_rank, void* dst_desc, int64_t elem_bytes, int32_t* sem_alloc,
    int32_t* sem, int64_t sem_offset, int64_t sem_id, int32_t* send_alloc,
    int32_t* send_sem, int64_t send_offset, int64_t send_sem_id,
    int64_t device, int64_t mode, int64_t regular, int64_t add,
    int64_t pad_rank, void* pad_desc, int64_t site, int64_t grid_index) {
  (void)sem_alloc;
  (void)send_alloc;
  auto lock = ctx->launch->Lock();
  pallas_cpu::Guarded(ctx, "a DMA start", [&] {
    Actor* self = ctx->actor;
    Dma dma{pallas_cpu::FromDescriptor(src_rank, src_desc, elem_bytes),
            pallas_cpu::FromDescriptor(dst_rank, dst_desc, elem_bytes),
            elem_bytes,
            sem + sem_offset,
            nullptr,
            0,
            0,
            0,
            /*landed=*/false,
            /*busy=*/false,
            site,
            grid_index,
            self->index};
    if (dma.src.sizes != dma.dst.sizes) {
      std::ostringstream os;
      os << pallas_cpu::DmaName(ctx, dma) << " signalling "
         << ctx->SemaphoreName(sem_id, sem_offset)
         << ": source and destination shapes differ";
      ctx->Fail(os.str());
      return;
    }
    // The semaphore counts the whole window, tile padding included.
    const int64_t window_bytes = dma.src.NumElements() * elem_bytes;
    if (!regular && window_bytes > INT32_MAX) {
      std::ostringstream os;
      os << pallas_cpu::DmaName(ctx, dma) << " copies " << window_bytes
         << " bytes: a DMA semaphore counts at most 2^31 - 1";
      ctx->Fail(os.str());
      return;
    }
    pallas_cpu::PadDma(dma, pallas_cpu::FromDescriptor(pad_rank, pad_desc, 8));
    if (device >= 0) {
      // A remote copy: the destination and its semaphore are the same
      // buffer and semaphore of the same core on device `device`.
      Actor* target = ctx->launch->Target(self, device, -1, grid_index,
                                          "remote DMA");
      if (target == nullptr) return;
      pallas_cpu::Extent e = pallas_cpu::ExtentOf(dma.written(), elem_bytes);
      if (e.lo <= e.hi) {
        char* there = ctx->launch->Translate(self, target, e.lo,
                                             e.hi - e.lo + 1, grid_index);
        if (there == nullptr) return;
        dma.dst.base += there - e.lo;
        if (!dma.pad_dst.sizes.empty()) dma.pad_dst.base += there - e.lo;
      }
      dma.sem = ctx->launch->Find(self, target, sem_id, sem_offset,
                                  grid_index);
      if (dma.sem == nullptr) return;
      dma.dst_actor = target->index;
      if (send_sem_id >= 0) dma.send_sem = send_sem + send_offset;
    }
    dma.add = add;
    // A DMA of no bytes on a DMA semaphore (a run-time size of 0) is done
    // as it starts: it signals nothing, and its wait takes nothing.
    if (!regular && window_bytes == 0) return;
    dma.units = regular ? 1 : static_cast<int32_t>(window_bytes);
    dma.unwaited = dma.units;
    dma.send_unwaited = dma.send_sem != nullptr ? dma.units : 0;
    ctx->dmas.push_back(std::move(dma));
    if (ctx->launch->races() != nullptr) {
      Dma& started = ctx->dmas.back();
      started.race_actor = ctx->launch->races()->StartDma(
          static_cast<int32_t>(self->index));
      ctx->launch->NoteDmaStarter(started.race_actor, self->index);
    }
    if (mode == 0) pallas_cpu::Execute(ctx->launch, ctx->dmas.back(), &lock);
  });
  ctx->launch->Notify();
}

extern "C" void pallas_cpu_rt_sem_signal(PallasCpuRuntimeContext* ctx,
                                         int32_t* alloc, int32_t* sem,
                                         int64_t offset, int32_t inc,
                                         int64_t sem_id, int64_t grid_index) {
  (void)alloc;
  (void)sem_id;
  (void)grid_index;
  auto lock = ctx->launch->Lock();
  if (ctx->launch->races() != nullptr) {
    ctx->launch->races()->Release(static_cast<int32_t>(ctx->actor->index),
                                  sem + offset);
  }
  sem[offset] += inc;
  ctx->launch->Notify();
}

extern "C" int32_t pallas_cpu_rt_sem_wait(PallasCpuRuntimeContext* ctx,
                                          int32_t* alloc, int32_t* sem,
                                          int64_t offset, int32_t value,
                                          int64_t sem_id, int64_t grid_index) {
  (void)alloc;
  int32_t* counter = sem + offset;
  bool ok = false;
  auto lock = ctx->launch->Lock();
  pallas_cpu::Guarded(ctx, "a semaphore wait", [&] {
    pallas_cpu::WaitState wait{counter, value, sem_id, offset, grid_index};
    ok = ctx->launch->Wait(lock, ctx->actor, wait, [&] {
      return pallas_cpu::RunOnePendingFor(ctx, counter, &lock);
    });
    if (!ok) return;
    *counter -= value;
    if (ctx->launch->races() != nullptr) {
      ctx->launch->races()->Acquire(static_cast<int32_t>(ctx->actor->index),
                                    counter);
    }
    pallas_cpu::Consume(ctx, counter, value);
  });
  return ok && !ctx->failed.load(std::memory_order_relaxed) ? 1 : 0;
}

extern "C" int32_t pallas_cpu_rt_sem_read(PallasCpuRuntimeContext* ctx,
                                          int32_t* alloc, int32_t* sem,
                                          int64_t offset) {
  (void)alloc;
  auto lock = ctx->launch->Lock();
  return sem[offset];
}

extern "C" void pallas_cpu_rt_sem_register(PallasCpuRuntimeContext* ctx,
                                           int64_t sem_id, int64_t base,
                                           int64_t count) {
  auto lock = ctx->launch->Lock();
  ctx->launch->Register(ctx->actor, sem_id, reinterpret_cast<int32_t*>(base),
                        count);
}

extern "C" void pallas_cpu_rt_buffer_register(PallasCpuRuntimeContext* ctx,
                                              int64_t base, int64_t nbytes,
                                              int64_t elem_bytes,
                                              int64_t site) {
  auto lock = ctx->launch->Lock();
  char* p = reinterpret_cast<char*>(base);
  ctx->actor->regions.push_back({p, nbytes});
  if (ctx->launch->races() != nullptr) {
    std::string who = ctx->launch->ActorName(*ctx->actor);
    ctx->launch->races()->AddBuffer(
        p, nbytes, elem_bytes,
        (site >= 0 ? ctx->Site(site) : std::string("a kernel buffer")) +
            (who.empty() ? "" : " of " + who),
        /*fresh=*/true);
  }
}

extern "C" void pallas_cpu_rt_race_access(PallasCpuRuntimeContext* ctx,
                                          int64_t rank, void* desc,
                                          int64_t elem_bytes, int64_t write,
                                          int64_t site, int64_t grid_index) {
  auto lock = ctx->launch->Lock();
  if (ctx->launch->races() == nullptr) return;
  pallas_cpu::StridedWindow w =
      pallas_cpu::FromDescriptor(rank, desc, elem_bytes);
  ctx->launch->RaceAccess(ctx->actor, -1, w.base, w.sizes, w.strides,
                          elem_bytes, write != 0, site, grid_index);
}

#define PALLAS_CPU_RACE_ACCESS_FOR(TY)                                        \
  extern "C" PALLAS_CPU_EXPORT void pallas_cpu_rt_race_access_##TY(           \
      PallasCpuRuntimeContext* ctx, int64_t rank, void* desc,                 \
      int64_t elem_bytes, int64_t write, int64_t site, int64_t grid_index) {  \
    pallas_cpu_rt_race_access(ctx, rank, desc, elem_bytes, write, site,       \
                              grid_index);                                    \
  }
PALLAS_CPU_RACE_ACCESS_FOR(f16)
PALLAS_CPU_RACE_ACCESS_FOR(bf16)
PALLAS_CPU_RACE_ACCESS_FOR(f32)
PALLAS_CPU_RACE_ACCESS_FOR(f64)
PALLAS_CPU_RACE_ACCESS_FOR(i8)
PALLAS_CPU_RACE_ACCESS_FOR(i16)
PALLAS_CPU_RACE_ACCESS_FOR(i32)
PALLAS_CPU_RACE_ACCESS_FOR(i64)
PALLAS_CPU_RACE_ACCESS_FOR(f8E4M3FN)
PALLAS_CPU_RACE_ACCESS_FOR(f8E5M2)
#undef PALLAS_CPU_RACE_ACCESS_FOR

extern "C" void pallas_cpu_rt_enter(PallasCpuRuntimeContext* ctx) {
  ctx->launch->Enter(ctx->actor);
}

extern "C" void pallas_cpu_rt_exit_barrier(PallasCpuRuntimeContext* ctx,
                                           int64_t phase) {
  ctx->launch->ExitBarrier(ctx->actor, static_cast<int>(phase));
}

extern "C" int32_t pallas_cpu_rt_device_id(PallasCpuRuntimeContext* ctx) {
  return static_cast<int32_t>(ctx->device);
}

extern "C" void pallas_cpu_rt_sem_signal_remote(PallasCpuRuntimeContext* ctx,
                                                int64_t sem_id, int64_t offset,
                                                int32_t inc, int64_t device,
                                                int64_t core,
                                                int64_t grid_index) {
  auto lock = ctx->launch->Lock();
  Actor* target = ctx->launch->Target(ctx->actor, device, core, grid_index,
                                      "semaphore_signal");
  if (target == nullptr) return;
  int32_t* sem = ctx->launch->Find(ctx->actor, target, sem_id, offset,
                                   grid_index);
  if (sem == nullptr) return;
  if (ctx->launch->races() != nullptr) {
    ctx->launch->races()->Release(static_cast<int32_t>(ctx->actor->index),
                                  sem);
  }
  *sem += inc;
  ctx->launch->Notify();
}

extern "C" void pallas_cpu_rt_buffer_exit(PallasCpuRuntimeContext* ctx,
                                          int64_t base, int64_t nbytes,
                                          int64_t site, int64_t grid_index) {
  auto lock = ctx->launch->Lock();
  pallas_cpu::WaitForIdleDmas(ctx, lock);  // none is dropped mid-copy
  const char* lo = reinterpret_cast<const char*>(base);
  const int64_t me = ctx->actor->index;
  pallas_cpu::ForEachQueue(ctx, [&](std::list<Dma>& q) {
    for (auto it = q.begin(); it != q.end();) {
      // A remote DMA from this actor writes elsewhere; one from another
      // actor reads elsewhere.
      bool mine = &q == &ctx->dmas;
      bool reads = mine && pallas_cpu::ExtentOf(it->src, it->elem_bytes)
                               .Overlaps(lo, nbytes);
      bool writes = it->dst_actor == me &&
                    pallas_cpu::ExtentOf(it->written(), it->elem_bytes)
                        .Overlaps(lo, nbytes);
      if (!reads && !writes) {
        ++it;
        continue;
      }
      std::ostringstream os;
      os << pallas_cpu::DmaName(ctx, *it) << " "
         << (writes ? "writes to " : "reads from ") << ctx->Site(site)
         << ", which is freed when its scope ends at "
         << ctx->GridPoint(grid_index) << ", before the DMA was waited for"
         << (it->landed ? "" : " (the copy has not even started: on a TPU it "
                               "would read or write freed memory)");
      ctx->Fail(os.str());
      it = q.erase(it);  // never executed: its memory is gone
    }
  });
}

extern "C" void pallas_cpu_rt_sem_exit(PallasCpuRuntimeContext* ctx,
                                       int64_t base, int64_t count,
                                       int64_t sem_id, int64_t scoped,
                                       int64_t mode, int64_t grid_index) {
  auto lock = ctx->launch->Lock();
  pallas_cpu::WaitForIdleDmas(ctx, lock);  // none is dropped mid-copy
  auto* sems = reinterpret_cast<int32_t*>(base);
  const char* when = scoped ? "the end of its run_scoped scope" : "kernel exit";
  for (int64_t i = 0; i < count; ++i) {
    int32_t* sem = sems + i;
    const Dma* first = nullptr;
    pallas_cpu::ForEachQueue(ctx, [&](std::list<Dma>& q) {
      for (const Dma& d : q) {
        if (first == nullptr && (d.sem == sem || d.send_sem == sem)) {
          first = &d;
        }
      }
    });
    if (*sem == 0 && first == nullptr) continue;
    std::ostringstream os;
    if (first != nullptr) {
      os << pallas_cpu::DmaName(ctx, *first) << " was never waited for: at "
         << when << " (" << ctx->GridPoint(grid_index) << ") its "
         << ctx->SemaphoreName(sem_id, i) << " holds " << *sem
         << (first->landed ? "" : " (on_wait mode: the copy has not run)");
    } else {
      os << ctx->SemaphoreName(sem_id, i) << " holds " << *sem << " at "
         << when << " (" << ctx->GridPoint(grid_index)
         << "): it was signalled more than it was waited for";
    }
    pallas_cpu::Report(ctx, mode, os.str());
    // A scoped semaphore starts its next scope at zero (the kernel goes on
    // after a warning).
    if (scoped) *sem = 0;
    // The DMAs complete (as the hardware would) unless that is an error
    // anyway; either way they are forgotten with their semaphore.
    pallas_cpu::ForEachQueue(ctx, [&](std::list<Dma>& q) {
      for (auto it = q.begin(); it != q.end();) {
        if (it->sem != sem && it->send_sem != sem) {
          ++it;
          continue;
        }
        if (!it->landed && mode != 0) {
          pallas_cpu::Guarded(ctx, "a DMA at exit",
                              [&] { pallas_cpu::Execute(ctx->launch, *it); });
        }
        it = q.erase(it);
      }
    });
  }
}

// One DMA entry point per element type: generated code passes unranked
// memrefs, whose MLIR type names the element type, so each type needs its own
// symbol; all share one implementation.
#define PALLAS_CPU_DMA_START_FOR(TY)                                          \
  extern "C" PALLAS_CPU_EXPORT void pallas_cpu_rt_dma_start_##TY(             \
      PallasCpuRuntimeContext* ctx, int64_t src_rank, void* src_desc,         \
      int64_t dst_rank, void* dst_desc, int64_t elem_bytes,                   \
      int32_t* sem_alloc, int32_t* sem, int64_t sem_offset, int64_t sem_id,   \
      int32_t* send_alloc, int32_t* send_sem, int64_t send_offset,            \
      int64_t send_sem_id, int64_t device, int64_t mode, int64_t regular,     \
      int64_t add, int64_t pad_rank, void* pad_desc, int64_t site,            \
      int64_t grid_index) {                                                   \
    pallas_cpu_rt_dma_start(ctx, src_rank, src_desc, dst_rank, dst_desc,      \
                            elem_bytes, sem_alloc, sem, sem_offset, sem_id,   \
                            send_alloc, send_sem, send_offset, send_sem_id,   \
                            device, mode, regular, add, pad_rank, pad_desc,   \
                            site, grid_index);                                \
  }
PALLAS_CPU_DMA_START_FOR(f16)
PALLAS_CPU_DMA_START_FOR(bf16)
PALLAS_CPU_DMA_START_FOR(f32)
PALLAS_CPU_DMA_START_FOR(f64)
PALLAS_CPU_DMA_START_FOR(i8)
PALLAS_CPU_DMA_START_FOR(i16)
PALLAS_CPU_DMA_START_FOR(i32)
PALLAS_CPU_DMA_START_FOR(i64)
PALLAS_CPU_DMA_START_FOR(f8E4M3FN)
PALLAS_CPU_DMA_START_FOR(f8E5M2)
#undef PALLAS_CPU_DMA_START_FOR

extern "C" void pallas_cpu_rt_kernel_exit(PallasCpuRuntimeContext* ctx,
                                          int64_t mode, int64_t grid_index) {
  // Semaphores the kernel does not own (operands) are not checked one by
  // one; a DMA still tracked here signalled one of them.
  auto lock = ctx->launch->Lock();
  pallas_cpu::WaitForIdleDmas(ctx, lock);  // none is dropped mid-copy
  auto& q = ctx->dmas;
  while (!q.empty()) {
    Dma& dma = q.front();
    std::ostringstream os;
    os << pallas_cpu::DmaName(ctx, dma) << " was never waited for at kernel "
       << "exit (" << ctx->GridPoint(grid_index) << ")";
    pallas_cpu::Report(ctx, mode, os.str());
    if (!dma.landed && mode != 0) {
      pallas_cpu::Guarded(ctx, "a DMA at exit",
                          [&] { pallas_cpu::Execute(ctx->launch, dma); });
    }
    q.pop_front();
  }
}
