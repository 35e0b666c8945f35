// Helpers for tests that run on every rank of an MPI job: each rank records its own
// failures, and the verdict is taken over the whole world, so all ranks pass or fail a check
// together (a rank that failed alone would otherwise leave the others waiting in the next
// collective), and rank 0, the only one whose gtest output is printed, can say which ranks
// failed.
#pragma once

#include <cstdint>
#include <string>

#include "core/error.h"

namespace par::testing {

class Failures {
 public:
  // Records a failure; the first few messages are kept for the report.
  template <typename... Args>
  void fail(const Args&... args) {
    if (count_ < kKept) messages_ += cat("  ", args...) + "\n";
    ++count_;
  }
  template <typename... Args>
  void check(bool ok, const Args&... args) {
    if (!ok) fail(args...);
  }
  int64_t count() const { return count_; }
  const std::string& messages() const { return messages_; }

 private:
  static constexpr int64_t kKept = 5;
  int64_t count_ = 0;
  std::string messages_;
};

// Collective over MPI_COMM_WORLD (every rank must call it, the same number of times):
// fails the current test on every rank unless no rank recorded a failure. Failing ranks
// print their messages to stderr themselves; rank 0's assertion lists the failing ranks.
void expect_all_ranks_ok(const Failures& failures, const std::string& what);

// World rank and size of this process.
int world_rank();
int world_size();

}  // namespace par::testing
