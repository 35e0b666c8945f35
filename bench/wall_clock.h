// Seconds on a steady clock, for the microbenchmarks' timings.
#pragma once

#include <chrono>

namespace par::bench {

inline double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace par::bench
