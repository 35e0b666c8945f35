#include "launch/peer_watch.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace par {

namespace {

// Whether the process exists and has not exited (a zombie waiting for its parent's
// wait() has).
bool alive(pid_t pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), {});
  const size_t paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] != 'Z';
}

}  // namespace

PeerWatch::PeerWatch(Communicator& world, const std::string& host) : host_(host), rank_(world.rank()) {
  constexpr int kName = 64;
  std::vector<uint8_t> mine(kName + 8, 0), all(size_t(world.size()) * (kName + 8));
  std::snprintf(reinterpret_cast<char*>(mine.data()), kName, "%s", host.c_str());
  const int64_t pid = ::getpid();
  std::memcpy(mine.data() + kName, &pid, 8);
  world.all_gather(mine.data(), all.data(), kName + 8, DataType::kUInt8);
  for (int r = 0; r < world.size(); ++r) {
    const uint8_t* e = all.data() + size_t(r) * (kName + 8);
    int64_t p = 0;
    std::memcpy(&p, e + kName, 8);
    if (r != rank_ && std::strncmp(reinterpret_cast<const char*>(e),
                                   reinterpret_cast<const char*>(mine.data()), kName) == 0)
      peers_.push_back({r, pid_t(p)});
  }
  if (!peers_.empty()) thread_ = std::thread([this] { run(); });
}

PeerWatch::~PeerWatch() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PeerWatch::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_; })) {
    for (const Peer& p : peers_) {
      if (alive(p.pid)) continue;
      // Not an exception: the main thread is blocked in MPI, and only it may call MPI.
      // The peer may itself have been ended by the launcher after another rank failed: the
      // first failure is the launcher's to name.
      std::fprintf(stderr, "par: rank %d on host %s: rank %d (pid %d) on this host has ended; "
                   "ending this rank too (the launcher's message names the rank that failed "
                   "first)\n", rank_, host_.c_str(), p.rank, int(p.pid));
      std::fflush(stderr);
      ::_exit(1);
    }
  }
}

}  // namespace par
