#include "launch/job.h"

#include <mpi.h>

#include <climits>
#include <exception>
#include <functional>
#include <iostream>
#include <string>

#include "core/error.h"
#include "launch/collective_watch.h"
#include "launch/peer_watch.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_environment.h"

namespace par {

Job::Job(const std::string& command, int* argc, char*** argv) : command_(command) {
  if (!MpiEnvironment::launched_by_mpi()) {
    // srun without an MPI plugin (a cluster whose MpiDefault is none) starts its tasks as
    // strangers: each would train alone into the same run. Say so once, from task 0. A
    // sweep of one-process runs (each task its own --out) says PAR_ONE_PROCESS=1.
    if (const int tasks = MpiEnvironment::launcher_world_size();
        tasks > 1 && !MpiEnvironment::alone_by_choice()) {
      if (MpiEnvironment::launcher_world_rank() == 0)
        std::cerr << cat("par ", command, ": error: srun started ", tasks, " tasks, but "
                         "without an MPI plugin each is alone: start it with srun --mpi=pmix "
                         "(or --mpi=pmi2; `srun --mpi=list` shows this cluster's); for tasks "
                         "that each run alone on purpose, set PAR_ONE_PROCESS=1\n")
                  << std::flush;
      throw JobStopped(2);
    }
    return;
  }
  env_ = std::make_unique<MpiEnvironment>(argc, argv);
  world_ = std::make_unique<MpiCommunicator>(env_->world());
  watch_ = std::make_unique<PeerWatch>(*world_, env_->host());
}

Job::~Job() {
  // Unwinding an exception, the environment aborts the job: no rank waits for this one.
  if (std::uncaught_exceptions() == 0) stop_watching();
  watch_.reset();
  world_.reset();
  env_.reset();
}

void Job::stop_watching() {
  if (!watch_) return;
  watch_.reset();
  world_->barrier();
}

void Job::watch_collectives(double timeout) {
  if (!env_ || timeout <= 0 || collectives_) return;
  collectives_ = std::make_shared<CollectiveWatch>(timeout, where());
  world_ = CollectiveWatch::wrap(collectives_, std::move(world_), "world");
}

int Job::world_rank() const { return env_ ? env_->world_rank() : 0; }
int Job::world_size() const { return env_ ? env_->world_size() : 1; }

int Job::local_size() const { return env_ ? env_->local_size() : 1; }

std::string Job::where() const {
  return env_ ? cat("rank ", env_->world_rank(), " on host ", env_->host()) : std::string();
}

ProcessGrid Job::make_grid(const GridShape& shape) {
  if (!env_) {
    if (shape.size() != 1)
      fail_user("--dp ", shape.dp, " x --sp ", shape.sp, " x --tp ", shape.tp, " = ",
                shape.size(), " ranks, but this is one process: start it with "
                "`mpirun -np ", shape.size(), " par ", command_, " ...` (or srun)");
    return ProcessGrid();
  }
  ProcessGrid grid(env_->world(), shape);
  watch_groups(grid, collectives_);
  return grid;
}

void Job::settle(int code, const std::string& message) {
  if (!env_) return;
  const int64_t worst = world_->all_reduce_value(int64_t(code), ReduceOp::kMax);
  if (worst == 0) return;
  // Where every rank failed with the same message (a layout that does not fit, a missing
  // file), rank 0 says it once for all; otherwise each failing rank says its own.
  const int64_t hash = int64_t(std::hash<std::string>{}(message) >> 1);  // >= 0
  const int64_t failing = world_->all_reduce_value(int64_t(code != 0), ReduceOp::kSum);
  const int64_t highest = world_->all_reduce_value(code != 0 ? hash : -1, ReduceOp::kMax);
  const int64_t lowest = -world_->all_reduce_value(code != 0 ? -hash : INT64_MIN, ReduceOp::kMax);
  const bool once = failing == world_size() && highest == lowest;
  // One write per message, so the lines of different ranks do not interleave.
  if (code != 0 && !once)
    std::cerr << cat("par ", command_, ": error: ", where(), ": ", message, "\n") << std::flush;
  if (once && world_rank() == 0)
    std::cerr << cat("par ", command_, ": error: all ", world_size(), " ranks: ", message, "\n")
              << std::flush;
  // Every rank is here: MPI can shut down in order (the environment then skips its own).
  stop_watching();
  world_.reset();
  MPI_Finalize();
  throw JobStopped(int(worst));
}

void Job::fail(const std::exception& e, int code) {
  if (!env_) throw;
  std::cerr << cat("par ", command_, ": ", code == 2 ? "error" : "internal error", ": ", where(),
                   ": ", e.what(), "\n")
            << std::flush;
  env_->abort(code);
}

}  // namespace par
