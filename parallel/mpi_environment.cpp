// See mpi_environment.h.
#include "parallel/mpi_environment.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <iostream>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "core/fatal_signals.h"
#include "parallel/mpi_error.h"

namespace par {
namespace {

// A non-negative integer from the environment, or -1.
int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return -1;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 30) return -1;
  return int(x);
}

}  // namespace

NodeLocal node_local(MPI_Comm comm) {
  NodeLocal out;
  // The node-local communicator is needed anyway for the size, and comparing with what the
  // launcher says is free; the launcher's rank wins because it is what GPU binding and
  // SLURM's own bookkeeping use.
  MPI_Comm shared = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &shared),
            "MPI_Comm_split_type");
  int rc_rank = MPI_Comm_rank(shared, &out.rank);
  int rc_size = MPI_Comm_size(shared, &out.size);
  MPI_Comm_free(&shared);
  check_mpi(rc_rank, "MPI_Comm_rank");
  check_mpi(rc_size, "MPI_Comm_size");

  // The launcher's variables describe MPI_COMM_WORLD only.
  int cmp = MPI_UNEQUAL;
  check_mpi(MPI_Comm_compare(comm, MPI_COMM_WORLD, &cmp), "MPI_Comm_compare");
  if (cmp == MPI_IDENT || cmp == MPI_CONGRUENT) {
    int r = env_int("OMPI_COMM_WORLD_LOCAL_RANK");
    if (r < 0) r = env_int("SLURM_LOCALID");
    if (r >= 0) out.rank = r;
  }
  return out;
}

MpiEnvironment::MpiEnvironment(int* argc, char*** argv)
    : host_(host_name()), uncaught_at_start_(std::uncaught_exceptions()) {
  int provided = 0;
  int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) {
    // The default handler usually aborts before we get here; if not, say where.
    throw std::runtime_error(cat("MPI_Init_thread failed on ", rank_on_host(),
                                 " (error code ", rc, ")"));
  }
  // MPI_Init may have put handlers of its own (a stack trace) on the fatal signals: ours
  // goes back on top, and calls them after its line.
  install_fatal_signal_message();
  // Every error must come back as a return code so check_mpi can name the rank and host.
  check_mpi(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN),
            "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN),
            "MPI_Comm_set_errhandler");
  if (provided < MPI_THREAD_FUNNELED) {
    throw std::runtime_error(cat("MPI_Init_thread on ", rank_on_host(),
                                 ": the MPI library does not support MPI_THREAD_FUNNELED"));
  }
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &world_size_), "MPI_Comm_size");
  NodeLocal local = node_local(MPI_COMM_WORLD);
  local_rank_ = local.rank;
  local_size_ = local.size;
}

MpiEnvironment::~MpiEnvironment() {
  if (aborted_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  // MPI_Finalize waits for the other ranks; if this rank is unwinding from an error they
  // may be blocked in a collective it will never join, so end the job instead of hanging.
  if (std::uncaught_exceptions() > uncaught_at_start_) {
    std::cerr << cat("par: ", rank_on_host(),
                     ": error: exception in flight at MPI shutdown, aborting the job\n")
              << std::flush;
    abort(1);
  }
  MPI_Finalize();
}

bool MpiEnvironment::launched_by_mpi() {
  // Open MPI (mpirun/orterun), PMIx launchers (Open MPI 5, srun --mpi=pmix), PMI-1/2
  // launchers (MPICH's hydra, srun --mpi=pmi2), Intel MPI/MVAPICH (also PMI_*).
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                          "PMIX_NAMESPACE", "PMI_RANK", "PMI_SIZE", "PMI_FD",
                          "MPI_LOCALNRANKS", "MV2_COMM_WORLD_RANK"}) {
    const char* v = std::getenv(var);
    if (v && *v) return true;
  }
  return false;
}

namespace {

int first_env_int(std::initializer_list<const char*> vars, int otherwise) {
  for (const char* var : vars) {
    const char* v = std::getenv(var);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end == '\0' && n >= 0 && n <= 1 << 30) return int(n);
  }
  return otherwise;
}

}  // namespace

int MpiEnvironment::launcher_world_size() {
  // PMIx names no size; under srun (with any MPI plugin, or none) the step's task count is
  // SLURM_STEP_NUM_TASKS, which a batch script's own environment does not have.
  return first_env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"}, 1);
}

bool MpiEnvironment::alone_by_choice() {
  const char* v = std::getenv("PAR_ONE_PROCESS");
  return v && std::string(v) == "1";
}

int MpiEnvironment::launcher_world_rank() {
  return first_env_int({"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}, 0);
}

void MpiEnvironment::abort(int code) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  aborted_ = true;
  MPI_Abort(MPI_COMM_WORLD, code);
  // MPI_Abort does not return in practice; make sure of it.
  std::_Exit(code);
}

}  // namespace par
