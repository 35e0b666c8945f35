// Damaged copies of a file for tests of what reading them does: each with one random bit
// flipped, each read in a child process (a flip in HDF5's string heap crashes HDF5 1.10
// itself, which must not take the test binary with it).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <random>
#include <string>

#include "core/error.h"
#include "tests/child_process.h"
#include "tests/temp_dir.h"

namespace par::testing_util {

// What reading a damaged copy gave: the same data, other data (the failure the tests look
// for), a UserError, or a crash (a status over 128).
enum FlipRead : int { kReadSame = 0, kReadOther = 1, kReadRefused = 2 };

struct FlipCounts {
  int same = 0, refused = 0, crashed = 0;
};

// `rounds` copies of the file at `path`, each with one bit flipped at random (rng), written
// to `damaged` and given to read() in a child process: read() says kReadSame or kReadOther,
// or throws a UserError. Adds a test failure, naming the bit, and stops at the first copy
// read as other data.
inline FlipCounts read_flipped_copies(const std::string& path, const std::string& damaged,
                                      int rounds, uint64_t seed,
                                      const std::function<FlipRead()>& read) {
  const std::string bytes = slurp(path);
  std::mt19937_64 rng(seed);
  FlipCounts counts;
  for (int round = 0; round < rounds; ++round) {
    std::string b = bytes;
    const size_t at = size_t(rng() % b.size());
    const int bit = int(rng() % 8);
    b[at] = char(b[at] ^ (1 << bit));
    std::ofstream(damaged, std::ios::binary | std::ios::trunc) << b;
    const int status = status_in_child([&] {
      try {
        return int(read());
      } catch (const UserError&) {
        return int(kReadRefused);
      }
    });
    if (status == kReadOther) {
      ADD_FAILURE() << "bit " << bit << " of byte " << at << " of " << path
                    << " was read as other data";
      break;
    }
    counts.same += status == kReadSame;
    counts.refused += status == kReadRefused;
    counts.crashed += status > 128;
  }
  return counts;
}

}  // namespace par::testing_util
