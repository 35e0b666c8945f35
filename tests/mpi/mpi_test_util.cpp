// See mpi_test_util.h.
#include "tests/mpi/mpi_test_util.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <iostream>
#include <vector>

#include "parallel/mpi_error.h"

namespace par::testing {

int world_rank() {
  int r = 0;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &r), "MPI_Comm_rank");
  return r;
}

int world_size() {
  int n = 0;
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &n), "MPI_Comm_size");
  return n;
}

void expect_all_ranks_ok(const Failures& failures, const std::string& what) {
  // Raw MPI on the world rather than the communicator under test: the verdict must not
  // depend on the code being tested.
  const int n = world_size();
  std::vector<int64_t> counts(size_t(n), 0);
  int64_t mine = failures.count();
  check_mpi(MPI_Allgather(&mine, 1, MPI_INT64_T, counts.data(), 1, MPI_INT64_T, MPI_COMM_WORLD),
            "MPI_Allgather");
  if (mine > 0) {
    std::cerr << cat("[", rank_on_host(), "] ", what, ": ", mine, " failure(s):\n",
                     failures.messages())
              << std::flush;
  }
  std::string failed;
  int64_t total = 0;
  for (int r = 0; r < n; ++r) {
    total += counts[size_t(r)];
    if (counts[size_t(r)] > 0) failed += cat(failed.empty() ? "" : ", ", r);
  }
  EXPECT_EQ(total, 0) << what << ": failures on world ranks [" << failed
                      << "] (their messages are on stderr)"
                      << (mine > 0 ? cat("; here:\n", failures.messages()) : std::string());
}

}  // namespace par::testing
