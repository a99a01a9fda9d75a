#include "races.h"

#include <algorithm>
#include <map>
#include <sstream>
#include <utility>

namespace pallas_cpu {
namespace {

uint32_t Get(const VectorClock& vc, int32_t i) {
  return i >= 0 && static_cast<size_t>(i) < vc.size() ? vc[i] : 0;
}

void Join(VectorClock& into, const VectorClock& from) {
  if (into.size() < from.size()) into.resize(from.size(), 0);
  for (size_t i = 0; i < from.size(); ++i) into[i] = std::max(into[i], from[i]);
}

void Tick(VectorClock& vc, int32_t self) {
  if (vc.size() <= static_cast<size_t>(self)) vc.resize(self + 1, 0);
  ++vc[self];
}

}  // namespace

RaceDetector::RaceDetector(int64_t actors)
    : launch_actors_(actors), clocks_(actors) {
  // Every actor starts at its own clock 1 and knows nothing of the others:
  // what orders them is the entry barrier (coupled launches) or nothing
  // (the chunks of a parallel grid dimension, like the cores of a megacore
  // chip).
  for (int64_t a = 0; a < actors; ++a) Tick(clocks_[a], a);
}

void RaceDetector::AddBuffer(char* base, int64_t nbytes, int64_t elem_bytes,
                             std::string name, bool fresh) {
  if (nbytes <= 0 || elem_bytes <= 0) return;
  // A fresh buffer replaces whatever freed buffer overlapped it.
  if (fresh) {
    auto it = buffers_.lower_bound(base);
    if (it != buffers_.begin()) --it;
    while (it != buffers_.end() && it->first < base + nbytes) {
      if (it->first + it->second.nbytes > base) {
        it = buffers_.erase(it);
      } else {
        ++it;
      }
    }
  }
  Buffer& b = buffers_[base];
  if (b.base == base && b.nbytes >= nbytes) return;  // shared by cores
  b.base = base;
  b.nbytes = nbytes;
  b.elem_bytes = elem_bytes;
  b.name = std::move(name);
  b.ncells = (nbytes + elem_bytes - 1) / elem_bytes;
  const int64_t chunks = (b.ncells + kChunk - 1) / kChunk;
  b.pages.clear();
  b.pages.resize((chunks + kPageChunks - 1) / kPageChunks);
  b.shared.clear();
}

void RaceDetector::RemoveBuffer(char* base) { buffers_.erase(base); }

VectorClock& RaceDetector::Clock(int32_t actor) {
  if (clocks_.size() <= static_cast<size_t>(actor)) clocks_.resize(actor + 1);
  return clocks_[actor];
}

bool RaceDetector::Before(const AccessRecord& a, int32_t actor) const {
  if (a.actor < 0 || a.actor == actor) return true;  // program order
  return a.clock <= Get(clocks_[actor], a.actor);
}

void RaceDetector::Release(int32_t actor, const void* sync) {
  Join(syncs_[sync], Clock(actor));
  Tick(Clock(actor), actor);
}

void RaceDetector::Acquire(int32_t actor, const void* sync) {
  auto it = syncs_.find(sync);
  if (it != syncs_.end()) Join(Clock(actor), it->second);
}

void RaceDetector::JoinAll(const std::vector<int32_t>& actors) {
  VectorClock all;
  for (int32_t a : actors) Join(all, Clock(a));
  for (int32_t a : actors) {
    Join(Clock(a), all);
    Tick(Clock(a), a);
  }
}

int32_t RaceDetector::StartDma(int32_t starter) {
  const VectorClock& s = Clock(starter);
  int32_t dma = -1;
  // A retired DMA actor can carry this DMA when the starter already knows
  // everything it did (its last clock): then ordering the new DMA after the
  // old one is true.
  for (auto it = free_dmas_.begin(); it != free_dmas_.end(); ++it) {
    if (Get(s, *it) >= Get(clocks_[*it], *it)) {
      dma = *it;
      free_dmas_.erase(it);
      break;
    }
  }
  if (dma < 0) dma = static_cast<int32_t>(clocks_.size());
  uint32_t own = Get(Clock(dma), dma);
  VectorClock vc = Clock(starter);
  if (vc.size() <= static_cast<size_t>(dma)) vc.resize(dma + 1, 0);
  vc[dma] = std::max(vc[dma], own) + 1;
  Clock(dma) = std::move(vc);
  Tick(Clock(starter), starter);
  return dma;
}

void RaceDetector::CompleteDma(int32_t dma, const void* sync) {
  Join(syncs_[sync], Clock(dma));
}

void RaceDetector::RetireDma(int32_t dma) {
  if (IsDma(dma)) free_dmas_.push_back(dma);
}

RaceDetector::Buffer* RaceDetector::Find(const char* addr) {
  auto it = buffers_.upper_bound(const_cast<char*>(addr));
  if (it == buffers_.begin()) return nullptr;
  --it;
  Buffer& b = it->second;
  return addr < b.base + b.nbytes ? &b : nullptr;
}

void RaceDetector::Check(Buffer& b, Cell& c, int64_t key, int64_t lo,
                         int64_t hi, int32_t actor, bool write,
                         const AccessRecord& now, FoundMap* found) {
  // Fast path: everything this cell remembers is the actor's own (program
  // order), or nothing.
  const bool own_w = c.w_actor == actor || c.w_actor < 0;
  const bool own_r = c.r_actor == actor || c.r_actor == -1;
  if (!(own_w && own_r)) {
    auto note = [&](const char* kind, const AccessRecord& earlier) {
      auto k = std::make_pair(std::string(kind), earlier.site);
      auto it = found->find(k);
      if (it == found->end()) {
        found->emplace(k, Found{lo, hi, earlier});
      } else {
        it->second.lo = std::min(it->second.lo, lo);
        it->second.hi = std::max(it->second.hi, hi);
      }
    };
    AccessRecord w{c.w_actor, c.w_clock, c.w_site, c.w_grid};
    AccessRecord r{c.r_actor, c.r_clock, c.r_site, c.r_grid};
    if (!own_w && !Before(w, actor)) {
      note(write ? "write-write" : "read-write", w);
    }
    if (write) {
      if (c.r_actor == kShared) {
        auto it = b.shared.find(key);
        if (it != b.shared.end()) {
          for (const AccessRecord& reader : it->second) {
            if (!Before(reader, actor)) {
              note("read-write", reader);
              break;
            }
          }
          b.shared.erase(it);
        }
      } else if (!own_r && !Before(r, actor)) {
        note("read-write", r);
      }
    } else if (c.r_actor == kShared) {
      auto& readers = b.shared[key];
      auto same = std::find_if(
          readers.begin(), readers.end(),
          [&](const AccessRecord& x) { return x.actor == actor; });
      if (same != readers.end()) {
        *same = now;
      } else {
        readers.push_back(now);
      }
      return;
    } else if (!Before(r, actor)) {  // concurrent reads: keep both
      b.shared[key] = {r, now};
      c.r_actor = kShared;
      return;
    }
  }
  if (write) {
    c.w_actor = now.actor;
    c.w_clock = now.clock;
    c.w_site = now.site;
    c.w_grid = static_cast<int32_t>(now.grid);
    c.r_actor = -1;
  } else {
    c.r_actor = now.actor;
    c.r_clock = now.clock;
    c.r_site = now.site;
    c.r_grid = static_cast<int32_t>(now.grid);
  }
}

void RaceDetector::Split(Buffer& b, int64_t chunk) {
  Page& page = b.PageOf(chunk);
  const int64_t k = chunk % kPageChunks;
  if (page.cells == nullptr) {
    page.cells = std::make_unique<Cell[]>(kPageChunks * kChunk);
  }
  std::fill(page.cells.get() + k * kChunk, page.cells.get() + (k + 1) * kChunk,
            page.rep[k]);
  const int64_t lo = chunk * kChunk;
  const int64_t hi = std::min(lo + kChunk, b.ncells);
  auto it = b.shared.find(~chunk);
  if (it != b.shared.end()) {
    std::vector<AccessRecord> readers = std::move(it->second);
    b.shared.erase(it);
    for (int64_t i = lo; i < hi; ++i) b.shared[i] = readers;
  }
  page.uniform[k] = 0;
}

void RaceDetector::CheckRange(Buffer& b, int64_t lo, int64_t hi,
                              int32_t actor, bool write,
                              const AccessRecord& now, FoundMap* found) {
  for (int64_t k = lo; k <= hi;) {
    const int64_t chunk = k / kChunk;
    const int64_t first = chunk * kChunk;
    const int64_t last = std::min(first + kChunk, b.ncells) - 1;
    Page& page = b.PageOf(chunk);
    const int64_t c = chunk % kPageChunks;
    if (k == first && hi >= last) {  // the whole chunk
      if (page.uniform[c]) {
        Check(b, page.rep[c], ~chunk, first, last, actor, write, now, found);
      } else {
        Cell* cells = page.cells.get() + c * kChunk;
        for (int64_t i = first; i <= last; ++i) {
          Check(b, cells[i - first], i, i, i, actor, write, now, found);
        }
        if (write) {  // every cell now holds this write, and no reads
          page.rep[c] = cells[0];
          page.uniform[c] = 1;
        }
      }
      k = last + 1;
      continue;
    }
    if (page.uniform[c]) Split(b, chunk);
    Cell* cells = page.cells.get() + c * kChunk;
    const int64_t stop = std::min(hi, last);
    for (; k <= stop; ++k) {
      Check(b, cells[k - first], k, k, k, actor, write, now, found);
    }
  }
}

void RaceDetector::Access(
    int32_t actor, const char* base, const std::vector<int64_t>& sizes,
    const std::vector<int64_t>& strides, int64_t elem_bytes, bool write,
    int32_t site, int64_t grid,
    const std::function<std::string(const AccessRecord&)>& describe,
    std::vector<RaceReport>* reports) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  if (n == 0) return;
  Buffer* b = Find(base);
  if (b == nullptr) return;  // a temporary of the kernel: nobody else's
  AccessRecord now{actor, Get(Clock(actor), actor), site, grid};
  FoundMap found;
  const size_t rank = sizes.size();
  // Rows of the innermost dimension: contiguous cell ranges when it is
  // unit-stride in the buffer's own element size.
  const int64_t inner = rank ? sizes[rank - 1] : 1;
  const int64_t inner_stride = rank ? strides[rank - 1] : 1;
  const bool contiguous = inner_stride == 1 && elem_bytes == b->elem_bytes;
  std::vector<int64_t> idx(rank, 0);
  const char* end = b->base + b->nbytes;
  for (int64_t row = 0; row < n / inner; ++row) {
    int64_t off = 0;
    for (size_t d = 0; d + 1 < rank; ++d) off += idx[d] * strides[d];
    const char* p = base + off * elem_bytes;
    if (contiguous) {
      const char* q = p + (inner - 1) * elem_bytes;  // the row's last
      if (p >= b->base && q + elem_bytes <= end) {
        CheckRange(*b, (p - b->base) / b->elem_bytes,
                   (q - b->base) / b->elem_bytes, actor, write, now, &found);
      }
    } else {
      for (int64_t i = 0; i < inner; ++i) {
        const char* e = p + i * inner_stride * elem_bytes;
        if (e < b->base || e + elem_bytes > end) continue;
        CheckRange(*b, (e - b->base) / b->elem_bytes,
                   (e + elem_bytes - 1 - b->base) / b->elem_bytes, actor,
                   write, now, &found);
      }
    }
    for (size_t d = rank > 0 ? rank - 1 : 0; d-- > 0;) {  // the next row
      if (++idx[d] < sizes[d]) break;
      idx[d] = 0;
    }
  }
  for (auto& [key, f] : found) {
    auto dedupe = std::make_tuple(static_cast<const char*>(b->base),
                                  std::min(site, f.other.site),
                                  std::max(site, f.other.site), key.first);
    if (!reported_.insert(dedupe).second) continue;
    RaceReport r;
    r.kind = key.first;
    r.buffer = b->name;
    r.first = f.lo;
    r.last = f.hi;
    r.earlier = describe(f.other);
    r.later = describe(now);
    reports->push_back(std::move(r));
  }
}

}  // namespace pallas_cpu
