// Ends this rank when one collective has waited too long for its peers.
//
// A rank that hangs (a stuck GPU, a file system that stopped answering, a network that
// drops packets without closing connections) leaves every other rank blocked in its next
// collective, alive, and the job holds its nodes until the scheduler's time limit. The
// peer watch (launch/peer_watch.h) and the launchers catch ranks that die, not ones that
// hang. So every collective of the process grid's host groups is timed: a thread looks
// at the one in progress, and when it has waited longer than --collective-timeout, the
// rank says what it waited for and exits with status 1 (the main thread is inside MPI,
// which no other thread may interrupt); the launcher then ends the others. Collectives
// over device memory are the CUDA backend's (kernels/cuda/device_wait.h).
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/communicator.h"
#include "parallel/process_grid.h"

namespace par {

class CollectiveWatch {
 public:
  // timeout: seconds (> 0). where: "rank 3 on host node7", for the message.
  CollectiveWatch(double timeout, std::string where);
  ~CollectiveWatch();
  CollectiveWatch(const CollectiveWatch&) = delete;
  CollectiveWatch& operator=(const CollectiveWatch&) = delete;

  // `c` with its collectives timed; `group` names it in the message ("dp").
  static std::unique_ptr<Communicator> wrap(std::shared_ptr<CollectiveWatch> watch,
                                            std::unique_ptr<Communicator> c, std::string group);

  // The collective in progress, from begin() to end() (one at a time: the main thread's).
  // Nothing is formatted unless it times out: `op` and `group` must outlive the call.
  struct Collective {
    const char* op = "";
    const std::string* group = nullptr;
    int group_size = 0;
    int64_t count = 0;
    DataType type = DataType::kFloat32;
  };
  void begin(const Collective& c);
  void end();

 private:
  void run();

  const double timeout_;
  const std::string where_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool waiting_ = false;
  Collective current_;
  std::chrono::steady_clock::time_point since_;
  std::thread thread_;
};

// Times every collective of the grid's host groups with `watch` (nothing when it is null
// or the grid is one process). The watch lives as long as the grid's communicators.
void watch_groups(ProcessGrid& grid, const std::shared_ptr<CollectiveWatch>& watch);

}  // namespace par
