// A fixed pool of worker threads for parallel grid dimensions.
#ifndef PALLAS_CPU_THREADS_H_
#define PALLAS_CPU_THREADS_H_

#include <cstdint>
#include <functional>

namespace pallas_cpu {

// Runs fn(0) .. fn(n - 1), spread over at most `max_threads` threads (the
// calling thread and pool threads; one runs them in order on the caller);
// returns when all are done.  Calls from several threads at once are safe.
void ParallelFor(int64_t n, int64_t max_threads,
                 const std::function<void(int64_t)>& fn);

// Runs fn(0) .. fn(n - 1) each on its own thread (the caller runs fn(0)),
// all at once: for actors that wait for each other (the cores of a mesh),
// which a pool with fewer workers could not all run.
void RunOnThreads(int64_t n, const std::function<void(int64_t)>& fn);

// Workers in the pool (plus the caller): PALLAS_CPU_NUM_THREADS-independent;
// the Python side passes the requested count per call.
int64_t DefaultNumThreads();

}  // namespace pallas_cpu

#endif  // PALLAS_CPU_THREADS_H_
