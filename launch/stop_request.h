// Stopping a run early but cleanly: on a preemption signal, Ctrl-C or at a time limit,
// every rank finishes its current step, the job writes a checkpoint, and par exits with
// kExitRequeue so that a batch system (or a wrapper script) can requeue the job, which
// then resumes from that checkpoint with --resume auto.
#pragma once

#include <chrono>
#include <string>

#include "core/communicator.h"

namespace par {

// "Stopped early with a checkpoint: run me again." (EX_TEMPFAIL of sysexits.h.)
inline constexpr int kExitRequeue = 75;

// The environment variable naming a file that rank 0 writes when it exits kExitRequeue
// ("75 step N"): launchers whose own status hides par's (mpirun, itself signalled, exits
// 1) learn from it that the ranks stopped with a checkpoint.
inline constexpr const char* kStopFileVariable = "PAR_STOP_FILE";

class StopRequest {
 public:
  // Catches SIGUSR1, SIGTERM (what SLURM and mpirun send before ending a job) and SIGINT
  // (Ctrl-C) from here on: construct it before anything slow (MPI's start, reading data),
  // so that no signal during setup is fatal.
  StopRequest();
  ~StopRequest();
  StopRequest(const StopRequest&) = delete;
  StopRequest& operator=(const StopRequest&) = delete;

  // Adds a wall-clock limit counted from the construction (0: none).
  void set_time_limit(double max_minutes) { max_seconds_ = max_minutes * 60; }

  enum Reason { kNone = 0, kSignal = 1, kTimeLimit = 2 };
  struct Agreement {
    Reason reason = kNone;
    bool rank0_flag = false;  // rank 0's `flag`, as every rank learns it
  };
  // Collective over `world`: whether any rank was signalled, or rank 0's clock passed the
  // limit. Every rank gets the same answer at the same step. Rank 0's `flag` (a decision of
  // its own clock, such as a checkpoint being due) travels in the same collective, so a
  // step pays for one.
  Agreement agreed(Communicator& world, bool flag = false) const;
  static const char* describe(Reason r);

  // Writes "75 step N" to the file named by $PAR_STOP_FILE, if set (rank 0, on exit 75).
  static void record_stop(int64_t step);

 private:
  double max_seconds_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace par
