// A fixed pool of worker threads for parallel grid dimensions.
#ifndef PALLAS_CPU_THREADS_H_
#define PALLAS_CPU_THREADS_H_

#include <cstdint>
#include <functional>

namespace pallas_cpu {

// Runs fn(0) .. fn(n - 1), spread over the pool and the calling thread;
// returns when all are done.  Calls from several threads at once are safe.
void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

// Workers in the pool (plus the caller): PALLAS_CPU_NUM_THREADS-independent;
// the Python side passes the requested count per call.
int64_t DefaultNumThreads();

}  // namespace pallas_cpu

#endif  // PALLAS_CPU_THREADS_H_
