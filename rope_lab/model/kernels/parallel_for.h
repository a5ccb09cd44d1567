// parallel_for over XLA's CPU thread pool, shared by the kernels of this folder.

#ifndef ROPE_LAB_MODEL_KERNELS_PARALLEL_FOR_H_
#define ROPE_LAB_MODEL_KERNELS_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace rope_lab_kernels {

// Runs task(i) for i in [0, n) on the calling thread and the XLA pool's threads. Workers
// that start after every task is taken (the call may have returned by then) only read the
// shared counters, which they keep alive.
template <typename Task>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, const Task& task) {
  struct Counters {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable all_done;
  };
  auto counters = std::make_shared<Counters>();
  auto work = [counters, n, &task]() {
    for (int64_t i; (i = counters->next.fetch_add(1)) < n;) {
      task(i);
      if (counters->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(counters->mu);
        counters->all_done.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work]() { work(); });
  work();
  std::unique_lock<std::mutex> lock(counters->mu);
  counters->all_done.wait(lock, [&] { return counters->done.load() == n; });
}

}  // namespace rope_lab_kernels

#endif  // ROPE_LAB_MODEL_KERNELS_PARALLEL_FOR_H_
