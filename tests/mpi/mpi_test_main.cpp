// Entry point of par_mpi_tests, run under mpirun (tests/mpi/CMakeLists.txt registers it
// with 2 and 4 ranks). Every rank runs every test; only rank 0 prints gtest's report.
// An exception escaping a test would leave the other ranks blocked in a collective, so it
// is not caught by gtest: it ends the whole job here via MPI_Abort.
#include <gtest/gtest.h>
#include <mpi.h>

#include <exception>
#include <iostream>

#include "core/error.h"
#include "parallel/mpi_environment.h"
#include "parallel/mpi_error.h"

int main(int argc, char** argv) {
  par::MpiEnvironment env(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::GTEST_FLAG(catch_exceptions) = false;
  if (env.world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = 1;
  try {
    rc = RUN_ALL_TESTS();
  } catch (const std::exception& e) {
    std::cerr << par::cat("par_mpi_tests: ", par::rank_on_host(), ": error: ", e.what(), "\n")
              << std::flush;
    env.abort(1);
  }
  // All ranks should agree already; take the worst so mpirun's status cannot hide a failure.
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}
