// MpiEnvironment's view of the job: whether a launcher started the process (from the
// environment alone), and the node-local rank of the world (from the launcher's variables)
// agreeing with the host names the ranks report.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "parallel/mpi_environment.h"
#include "parallel/mpi_error.h"
#include "tests/mpi/mpi_test_util.h"

namespace par {
namespace {

using testing::expect_all_ranks_ok;
using testing::Failures;

TEST(MpiEnvironment, LaunchedByMpiReadsTheEnvironment) {
  Failures f;
  f.check(MpiEnvironment::launched_by_mpi(), "under mpirun, launched_by_mpi() is false");
  // Without any launcher variable, a plain process.
  const char* vars[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                        "PMIX_NAMESPACE",       "PMI_RANK",             "PMI_SIZE",
                        "PMI_FD",               "MPI_LOCALNRANKS",      "MV2_COMM_WORLD_RANK"};
  std::vector<std::optional<std::string>> saved;
  for (const char* v : vars) {
    const char* x = std::getenv(v);
    saved.push_back(x ? std::optional<std::string>(x) : std::nullopt);
    unsetenv(v);
  }
  f.check(!MpiEnvironment::launched_by_mpi(), "without launcher variables it is true");
  setenv("PMI_RANK", "0", 1);
  f.check(MpiEnvironment::launched_by_mpi(), "with PMI_RANK (hydra, srun --mpi=pmi2) false");
  unsetenv("PMI_RANK");
  for (size_t i = 0; i < saved.size(); ++i) {
    if (saved[i]) setenv(vars[i], saved[i]->c_str(), 1);
  }
  expect_all_ranks_ok(f, "launched_by_mpi");
}

TEST(MpiEnvironment, NodeLocalRankMatchesHostNames) {
  MpiCommunicator world(MPI_COMM_WORLD);
  constexpr int64_t kName = 64;
  const std::string host = host_name();
  std::vector<uint8_t> name(kName, 0), names(size_t(kName * world.size()));
  std::memcpy(name.data(), host.data(), std::min<size_t>(host.size(), kName - 1));
  world.all_gather(name.data(), names.data(), kName, DataType::kUInt8);
  int before = 0, same = 0;
  for (int q = 0; q < world.size(); ++q) {
    bool s = std::memcmp(names.data() + q * kName, name.data(), kName) == 0;
    same += s;
    before += s && q < world.rank();
  }
  NodeLocal local = node_local(MPI_COMM_WORLD);
  Failures f;
  f.check(local.rank == before, "node-local rank ", local.rank, ", want ", before);
  f.check(local.size == same, "node-local size ", local.size, ", want ", same);
  // Without the launcher's variables, MPI_Comm_split_type must give the same answer.
  MPI_Comm copy = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(MPI_COMM_WORLD, 0, -world.rank(), &copy), "MPI_Comm_split");
  NodeLocal reversed = node_local(copy);
  MPI_Comm_free(&copy);
  f.check(reversed.rank == same - 1 - before, "split_type rank (reversed order) ",
          reversed.rank, ", want ", same - 1 - before);
  expect_all_ranks_ok(f, "node-local rank");
}

}  // namespace
}  // namespace par
