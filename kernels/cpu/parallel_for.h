// Loops and regions that go to the OpenMP threads only when the work pays for it.
//
// A parallel region whose `if` clause is false still goes through libgomp, which makes and
// tears down a team of one: 1.2 us a call on a 2-vCPU Zen 5 VM, where an add of 1,024
// floats takes 0.04 us. A decoding step calls some fifty ops on a few rows each, so that
// was about 60 us a step. Below their thresholds these helpers run the body inline on the
// calling thread. There omp_get_num_threads() is 1 and omp_get_thread_num() 0, as in a team
// of one, so a ThreadShare in the body takes the whole range: the same arithmetic either way.
//
// Only for bodies that capture pointers and call functions: a lambda that captures a
// scalar by reference and stores elements of its type (Adam's step size, fill's value) is
// not vectorized, since each store might change the scalar. Adam over 8M floats took 10 ms
// that way against 3.6 with the pragma; such loops keep their `#pragma omp parallel for`.
#pragma once

#include <cstdint>

namespace par::cpu {

// body(i) for i in [0, n): split statically over the threads where `parallel`.
template <typename F>
inline void parallel_for(int64_t n, bool parallel, F&& body) {
  if (!parallel) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) body(i);
}

// The same, each thread taking one i at a time (tasks of uneven cost).
template <typename F>
inline void parallel_for_dynamic(int64_t n, bool parallel, F&& body) {
  if (!parallel) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) body(i);
}

// body() on every thread of a parallel region where `parallel`, else once, inline.
template <typename F>
inline void parallel_region(bool parallel, F&& body) {
  if (!parallel) {
    body();
    return;
  }
#pragma omp parallel
  body();
}

}  // namespace par::cpu
