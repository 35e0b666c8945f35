// Stopping a run early but cleanly: on a preemption signal or at a time limit, every rank
// finishes its current step, the job writes a checkpoint, and par exits with
// kExitRequeue so that a batch system (or a wrapper script) can requeue the job, which
// then resumes from that checkpoint with --resume auto.
#pragma once

#include <chrono>

#include "core/communicator.h"

namespace par {

// "Stopped early with a checkpoint: run me again." (EX_TEMPFAIL of sysexits.h.)
inline constexpr int kExitRequeue = 75;

class StopRequest {
 public:
  // Catches SIGUSR1 and SIGTERM (what SLURM and mpirun send before ending a job) from
  // here on; max_minutes > 0 adds a wall-clock limit counted from now.
  explicit StopRequest(double max_minutes);
  ~StopRequest();

  enum Reason { kNone = 0, kSignal = 1, kTimeLimit = 2 };
  // Collective over `world`: whether any rank was signalled, or rank 0's clock passed the
  // limit. Every rank gets the same answer at the same step.
  Reason agreed(Communicator& world) const;
  static const char* describe(Reason r);

 private:
  double max_seconds_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace par
