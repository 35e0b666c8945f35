// Ends this rank at once when another rank of the job on the same host has died.
//
// A rank blocked in a collective waits for a dead peer until the launcher kills it, and
// mpirun does that only after its kill timeout: SIGCONT, then SIGTERM (which par takes as
// a request to checkpoint at the next step boundary, one a blocked rank never reaches),
// then SIGKILL, each a timeout apart. A thread that looks at the pids of this host's other
// ranks every 100 ms ends the rank within a fraction of a second instead; the launcher
// then ends the rest. Peers on other hosts are watched by theirs.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/communicator.h"

namespace par {

class PeerWatch {
 public:
  // Collective over `world`: learns where every rank runs, then starts watching.
  PeerWatch(Communicator& world, const std::string& host);
  // Stops watching. Call on every rank before any may exit normally (then a barrier), so
  // that ranks ending one after another are not taken for dead.
  ~PeerWatch();
  PeerWatch(const PeerWatch&) = delete;
  PeerWatch& operator=(const PeerWatch&) = delete;

 private:
  void run();

  struct Peer {
    int rank;
    pid_t pid;
  };
  std::vector<Peer> peers_;  // the other ranks on this host
  std::string host_;
  int rank_ = 0;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace par
