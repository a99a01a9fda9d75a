#include "threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace pallas_cpu {
namespace {

// One ParallelFor in flight: workers claim indices until none are left.
struct Job {
  const std::function<void(int64_t)>* fn;
  int64_t n;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable finished;

  // Claims and runs indices; returns when none are left to claim.
  void Work() {
    for (int64_t i; (i = next.fetch_add(1)) < n;) {
      (*fn)(i);
      if (done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(mu);
        finished.notify_all();
      }
    }
  }
};

class Pool {
 public:
  Pool() = default;
  // The pool lives for the whole process (see Get): threads are detached
  // at exit rather than joined, so no teardown-order hazards.
  ~Pool() = delete;

  // Runs fn(0..n-1) on the caller and up to `helpers` pool threads; the
  // pool grows to `helpers` threads if it has fewer (a caller may ask for
  // more threads than the machine has CPUs: they time-share, and sleep
  // while idle).
  void Run(int64_t n, int64_t helpers,
           const std::function<void(int64_t)>& fn) {
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int64_t>(threads_.size()) < helpers) {
        threads_.emplace_back([this] { Loop(); });
        threads_.back().detach();
      }
      for (int64_t i = 0; i < helpers; ++i) queue_.push_back(job);
    }
    cv_.notify_all();
    job->Work();  // the caller works too
    std::unique_lock<std::mutex> lock(job->mu);
    job->finished.wait(lock, [&] { return job->done.load() == n; });
  }

  static Pool& Get() {
    static Pool* pool = new Pool();
    return *pool;
  }

 private:
  void Loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->Work();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::thread> threads_;
};

}  // namespace

int64_t DefaultNumThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int64_t>(n);
}

void RunOnThreads(int64_t n, const std::function<void(int64_t)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(n > 1 ? n - 1 : 0);
  for (int64_t i = 1; i < n; ++i) threads.emplace_back([&fn, i] { fn(i); });
  if (n > 0) fn(0);
  for (auto& t : threads) t.join();
}

void ParallelFor(int64_t n, int64_t max_threads,
                 const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t threads = std::min(n, std::max<int64_t>(max_threads, 1));
  if (threads == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Pool::Get().Run(n, threads - 1, fn);
}

}  // namespace pallas_cpu
