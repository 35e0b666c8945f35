// One training run per run directory: `par train` holds an fcntl lock on OUT/lock for as
// long as it runs, so a second run on the same --out is refused before it writes anything.
//
// fcntl (POSIX record) locks are what NFS (lockd, NFSv4) and the parallel file systems of
// clusters (Lustre, GPFS, BeeGFS) implement across nodes. The kernel (or the file server)
// drops the lock when its process ends, however it ends, so a lock left by a crashed or
// killed run never blocks the resume: only a live holder does. The file itself stays; it
// holds the latest holder's host and pid, for the message a refused run prints.
//
// POSIX locks belong to the process and are released when it closes *any* descriptor of
// the file, so nothing else in par may open OUT/lock while the lock is held.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

namespace par {

class RunLock {
 public:
  // Creates `dir` if needed and locks dir/lock. UserError naming the holder (host, pid,
  // start time) when another process holds it. Where the file system has no locks
  // (ENOLCK), warns and runs unlocked.
  explicit RunLock(const std::string& dir);
  // Unlocks. Destroyed by an exception (a failed start) while `dir`, made by it, holds
  // nothing but the lock file: removes both.
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  static std::string file(const std::string& dir) { return dir + "/lock"; }

  // UserError when dir/lock is no longer the file this run locked: the run directory or
  // its lock file was deleted or replaced, and another run could now take the directory
  // and have its checkpoints pruned by this one. Looks at most every 2 s (a stat).
  void check() const;

 private:
  bool still_ours() const;  // dir/lock is the file this run opened

  std::string dir_;
  bool made_dir_ = false;
  int fd_ = -1;
  bool identified_ = false;  // dev_ and ino_ are known
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  mutable std::chrono::steady_clock::time_point next_check_{};
};

}  // namespace par
