// The MPI library's lifetime in one process: MPI_Init_thread on construction, MPI_Finalize
// on destruction, plus what the process needs to know about its place in the job (world
// rank and size, host, rank among the processes on this node). One per process, owned by
// main(); everything else receives communicators explicitly.
//
// Threads: MPI_THREAD_FUNNELED. Only the main thread calls MPI; other threads (the data
// loader's prefetch thread, OpenMP workers) never do.
//
// Failure on one rank: the other ranks are typically blocked in a collective and would wait
// forever, so main() must catch what escapes, print it tagged with rank_on_host(), and call
// abort(), which ends every process of the job. As a safety net, an MpiEnvironment destroyed
// while an exception unwinds the stack aborts instead of finalizing.
#pragma once

#include <mpi.h>

#include <string>

namespace par {

class MpiEnvironment {
 public:
  // argc/argv may be null. Throws std::runtime_error if MPI cannot give FUNNELED support.
  MpiEnvironment(int* argc, char*** argv);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;

  MPI_Comm world() const { return MPI_COMM_WORLD; }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // Rank among the processes of this job on this node (selects a GPU, places threads).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  const std::string& host() const { return host_; }

  // Whether an MPI launcher (mpirun/mpiexec, srun, another PMI/PMIx launcher) started this
  // process. A plain `par train` is not, and can then skip MPI altogether.
  static bool launched_by_mpi();
  // Before MPI starts: the job's size and this process's rank as the launcher's environment
  // gives them (Open MPI's OMPI_COMM_WORLD_*, PMI_SIZE/PMI_RANK of PMI launchers such as
  // srun --mpi=pmi2 and hydra, PMIX_RANK, and srun's SLURM_STEP_NUM_TASKS/SLURM_PROCID,
  // which srun sets whatever its MPI plugin); 1 and 0 where it gives none.
  static int launcher_world_size();
  static int launcher_world_rank();
  // PAR_ONE_PROCESS=1: this process runs alone on purpose, whatever the launcher's
  // environment says (a script one rank runs, a sweep of one-process runs under srun).
  static bool alone_by_choice();

  // Ends every process of the job with this exit code (MPI_Abort on the world). Flushes
  // stdout and stderr first so the message explaining why gets out.
  [[noreturn]] void abort(int code);

 private:
  int world_rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::string host_;
  int uncaught_at_start_ = 0;
  bool aborted_ = false;
};

// Rank among the processes of `comm` on the same node, and how many there are. For the
// world communicator the launcher's answer is used when there is one
// (OMPI_COMM_WORLD_LOCAL_RANK, else SLURM_LOCALID); otherwise the rank within
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED). Collective over comm.
struct NodeLocal {
  int rank = 0;
  int size = 1;
};
NodeLocal node_local(MPI_Comm comm);

}  // namespace par
