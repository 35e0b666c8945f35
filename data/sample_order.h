// The order in which training visits windows: a pure function of (seed, global sample id).
//
// Sample g belongs to epoch e = g / W (W windows) and uses window perm_{seed,e}(g mod W),
// where perm is a keyed pseudorandom permutation of [0, W) computed in O(1) memory. Because
// nothing but the sample counter is state, a run resumed from a checkpoint, or restarted
// with a different parallel layout, sees exactly the windows it would have seen.
#pragma once

#include <cstdint>

namespace par {

// Window of global sample `sample` (>= 0) in a data set of num_windows (>= 1) windows.
int64_t window_of_sample(uint64_t seed, int64_t sample, int64_t num_windows);

}  // namespace par
