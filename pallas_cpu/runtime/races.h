// Race detection for the instrumented build: happens-before between every
// pair of conflicting accesses to a kernel's buffers by different actors.
//
// Actors are the launch's (device, core) actors and one virtual actor per
// in-flight DMA (its read and write halves).  Each has a vector clock;
// semaphores carry one too.  Ordering comes from the events TPU interpret
// mode uses: semaphore signal -> wait, DMA start -> its halves -> the wait
// on its semaphore, and the barriers at kernel entry and exit.
//
// Shadow state is per element of every registered buffer (FastTrack-style
// epochs, as in ThreadSanitizer): the last write's epoch, and the last
// read's -- or, while reads are concurrent, every concurrent reader's --
// with the source site and grid point of each, so memory grows with the
// buffers, not with the number of accesses.  Accesses arrive at the
// granularity of Pallas ref operations (one strided window per get/swap,
// block copy and DMA half), all under the launch's lock.
#ifndef PALLAS_CPU_RACES_H_
#define PALLAS_CPU_RACES_H_

#include <cstdint>
#include <functional>
#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace pallas_cpu {

struct StridedWindow;

using VectorClock = std::vector<uint32_t>;

// One side of a race, for the report.
struct AccessRecord {
  int32_t actor = -1;   // detector actor id (launch actor or DMA)
  uint32_t clock = 0;
  int32_t site = -1;    // FFI attribute `sites`
  int64_t grid = -1;    // row-major grid point
};

struct RaceReport {
  std::string kind;     // "write-write", "read-write" (a read, then a write)
                        // or "write-read" (a write, then a read)
  std::string buffer;   // what the buffer is
  int64_t first = 0;    // element range (flat, in the buffer's elements)
  int64_t last = 0;
  std::string earlier;  // the two accesses, described
  std::string later;
};

class RaceDetector {
 public:
  // `actors`: the launch's actors (index = launch actor index); `name`
  // describes an actor (and, for a DMA, where it started).
  explicit RaceDetector(int64_t actors);

  // A buffer accesses may touch: [base, base + nbytes) of `elem_bytes`
  // elements, called `name` in reports.  An operand is added by every
  // core of its device (kept once); a kernel allocation is `fresh`: its
  // memory may be an earlier actor's freed buffer, whose history it must
  // not inherit.
  void AddBuffer(char* base, int64_t nbytes, int64_t elem_bytes,
                 std::string name, bool fresh = false);
  void RemoveBuffer(char* base);

  // Synchronization.
  void Release(int32_t actor, const void* sync);   // a signal of `sync`
  void Acquire(int32_t actor, const void* sync);   // a wait on `sync`
  void JoinAll(const std::vector<int32_t>& actors);  // a barrier
  // A DMA started by `starter`: a fresh actor ordered after the start.
  int32_t StartDma(int32_t starter);
  // The DMA completed into `sync` (its semaphore).
  void CompleteDma(int32_t dma, const void* sync);
  // Its completion has been waited for: its actor may be reused.
  void RetireDma(int32_t dma);

  // An access of a strided window (base, sizes, strides in elements of
  // `elem_bytes`).  Races are passed to `report` once per (buffer, pair of
  // sites, kind).
  void Access(int32_t actor, const char* base,
              const std::vector<int64_t>& sizes,
              const std::vector<int64_t>& strides, int64_t elem_bytes,
              bool write, int32_t site, int64_t grid,
              const std::function<std::string(const AccessRecord&)>& describe,
              std::vector<RaceReport>* reports);

  bool IsDma(int32_t actor) const { return actor >= launch_actors_; }

 private:
  struct Cell {
    uint32_t w_clock = 0, r_clock = 0;
    int32_t w_actor = -1, r_actor = -1;  // r_actor kShared: see `shared`
    int32_t w_site = -1, r_site = -1;
    int32_t w_grid = -1, r_grid = -1;
  };
  static constexpr int32_t kShared = -2;
  // Cells come in chunks of kChunk; a chunk whose cells all hold the same
  // state keeps it once (`rep`), so an access that covers whole chunks --
  // a block's row -- checks and updates one state per chunk, not per
  // element (the range fast path).  Chunks come in pages of kPageChunks,
  // allocated when first touched, their cells when a chunk first splits:
  // a large operand the kernel reads a few pages of (paged attention's KV
  // cache) costs a pointer per page.
  static constexpr int64_t kChunk = 64;
  static constexpr int64_t kPageChunks = 64;
  struct Page {
    Cell rep[kPageChunks];
    uint8_t uniform[kPageChunks];
    std::unique_ptr<Cell[]> cells;  // kPageChunks * kChunk, once split
    Page() { std::fill(uniform, uniform + kPageChunks, 1); }
  };
  struct Buffer {
    char* base;
    int64_t nbytes;
    int64_t elem_bytes;
    std::string name;
    int64_t ncells = 0;
    std::vector<std::unique_ptr<Page>> pages;
    // Elements read concurrently by several actors: every reader's last
    // read; keyed by cell, or by ~chunk for a uniform chunk's state.
    std::unordered_map<int64_t, std::vector<AccessRecord>> shared;
    Page& PageOf(int64_t chunk) {
      auto& p = pages[chunk / kPageChunks];
      if (p == nullptr) p = std::make_unique<Page>();
      return *p;
    }
  };
  // What one access found: by (kind, the other access's site), the cells
  // and the other access.
  struct Found {
    int64_t lo, hi;
    AccessRecord other;
  };
  using FoundMap = std::map<std::pair<std::string, int32_t>, Found>;

  VectorClock& Clock(int32_t actor);
  bool Before(const AccessRecord& a, int32_t actor) const;
  Buffer* Find(const char* addr);
  // Checks and updates `c` (cells [lo, hi] of `b`; `key` its entry in
  // b.shared) for an access `now` by `actor`.
  void Check(Buffer& b, Cell& c, int64_t key, int64_t lo, int64_t hi,
             int32_t actor, bool write, const AccessRecord& now,
             FoundMap* found);
  // Cells [lo, hi] of `b`, whole chunks through their shared state.
  void CheckRange(Buffer& b, int64_t lo, int64_t hi, int32_t actor,
                  bool write, const AccessRecord& now, FoundMap* found);
  void Split(Buffer& b, int64_t chunk);

  int64_t launch_actors_;
  std::vector<VectorClock> clocks_;   // by actor
  std::vector<int32_t> free_dmas_;    // retired DMA actors
  std::map<const void*, VectorClock> syncs_;
  std::map<char*, Buffer> buffers_;   // by base address
  std::set<std::tuple<const char*, int32_t, int32_t, std::string>> reported_;
};

}  // namespace pallas_cpu

#endif  // PALLAS_CPU_RACES_H_
