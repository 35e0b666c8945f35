// The processes of one run of a distributed command (`par train`, `par bench`).
//
// Started by an MPI launcher (mpirun, srun), the job initializes MPI and its ranks form a
// dp x sp x tp ProcessGrid; started plainly, it is one process without MPI. Failures
// follow two rules:
// - setup (options, layout, data and checkpoint checks) runs on every rank inside
//   agree(): if it fails anywhere, every rank learns it at the same point, the failing
//   ranks print their message, MPI shuts down cleanly and every rank exits with the
//   error's status (2 for bad input);
// - after setup, an error on one rank is printed with its rank and host and ends every
//   process of the job at once (MPI_Abort), so no rank waits in a collective forever.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "parallel/process_grid.h"

namespace par {

class CollectiveWatch;
class MpiEnvironment;
class PeerWatch;

// Thrown on every rank after a failed agree(); main() exits with `code`, printing nothing
// more (the failing ranks have printed their messages).
struct JobStopped : std::runtime_error {
  int code;
  explicit JobStopped(int c) : std::runtime_error("job stopped"), code(c) {}
};

class Job {
 public:
  Job(const std::string& command, int* argc, char*** argv);
  ~Job();
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  bool distributed() const { return env_ != nullptr; }
  int world_rank() const;
  int world_size() const;
  // Ranks of this job on this node (1 without MPI).
  int local_size() const;
  // "rank 3 on host node7" when distributed, "" otherwise.
  std::string where() const;

  // From now on, every collective of the job -- the setup's agreement and the groups of
  // grids made after this -- ends the rank when it waits longer than `timeout` seconds
  // for the others (launch/collective_watch.h; --collective-timeout). Nothing without MPI
  // or with timeout <= 0. Call on every rank, once the options are known.
  void watch_collectives(double timeout);

  // Collective. Without MPI, only the shape 1 x 1 x 1 fits.
  ProcessGrid make_grid(const GridShape& shape);

  // Runs `setup` on every rank; see the file comment.
  template <typename F>
  void agree(F&& setup) {
    int code = 0;
    std::string message;
    try {
      setup();
    } catch (const UserError& e) {
      if (!distributed()) throw;
      code = 2;
      message = e.what();
    } catch (const std::exception& e) {
      if (!distributed()) throw;
      code = 1;
      message = e.what();
    }
    settle(code, message);
  }

  // Reports `e` (status `code`) and ends every process of the job; without MPI, rethrows
  // it for main() to report.
  [[noreturn]] void fail(const std::exception& e, int code);

 private:
  void settle(int code, const std::string& message);
  // Collective: no rank watches its peers any more (launch/peer_watch.h), so that ranks
  // may exit one after another.
  void stop_watching();

  std::string command_;
  std::unique_ptr<MpiEnvironment> env_;
  std::unique_ptr<Communicator> world_;  // MPI's world, timed once watch_collectives ran
  std::shared_ptr<CollectiveWatch> collectives_;
  std::unique_ptr<PeerWatch> watch_;
};

}  // namespace par
