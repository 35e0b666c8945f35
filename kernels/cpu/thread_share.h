// The one way CPU kernels split work among OpenMP threads: thread t of n takes the t-th of
// n contiguous, nearly equal parts. A thread count thus always gives the same partition,
// and sums combined part by part come out the same on every run.
#pragma once

#include <omp.h>

#include <cstdint>

namespace par::cpu {

struct ThreadShare {
  int64_t first, last;  // [first, last)
  ThreadShare(int64_t size, int t, int n) : first(size * t / n), last(size * (t + 1) / n) {}
  // The calling thread's part, inside a parallel region.
  explicit ThreadShare(int64_t size)
      : ThreadShare(size, omp_get_thread_num(), omp_get_num_threads()) {}
  int64_t size() const { return last - first; }
};

}  // namespace par::cpu
