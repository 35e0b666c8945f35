#include "launch/run_lock.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <glog/logging.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>

#include "core/error.h"
#include "parallel/mpi_error.h"

namespace par {

namespace {

struct flock whole_file(short type) {
  struct flock l {};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = 0;
  l.l_len = 0;  // to the end, however long
  return l;
}

// What the holder wrote into the lock file ("host H pid P since T"), read through the
// descriptor we already have open (opening another would be harmless here, but closing it
// would drop any lock this process holds on the file).
std::string holder_text(int fd) {
  char buf[512] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string s = n > 0 ? std::string(buf, size_t(n)) : std::string();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

RunLock::RunLock(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  made_dir_ = !std::filesystem::exists(dir, ec);
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    fail_user("cannot create the run directory --out ", dir, ": ",
              ec ? ec.message() : "it exists and is not a directory");
  const std::string path = file(dir);
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_user("cannot open the lock file ", path, ": ", std::strerror(errno));
  // Which file this is, for check(): also where the file system has no locks.
  struct stat st {};
  if (::fstat(fd_, &st) == 0) {
    dev_ = st.st_dev;
    ino_ = st.st_ino;
    identified_ = true;
  }
  struct flock l = whole_file(F_WRLCK);
  if (::fcntl(fd_, F_SETLK, &l) != 0) {
    const int err = errno;
    if (err == ENOLCK) {
      LOG(WARNING) << "the file system of " << dir << " has no file locks (" << std::strerror(err)
                   << "): nothing stops a second run from using this --out at the same time";
      return;
    }
    std::string holder = holder_text(fd_);
    struct flock probe = whole_file(F_WRLCK);
    if (holder.empty() && ::fcntl(fd_, F_GETLK, &probe) == 0 && probe.l_type != F_UNLCK)
      holder = cat("pid ", probe.l_pid);
    ::close(fd_);
    fd_ = -1;
    if (err != EAGAIN && err != EACCES)
      fail_user("cannot lock ", path, ": ", std::strerror(err));
    fail_user("the run directory ", dir, " is in use by another `par train` (",
              holder.empty() ? "holder unknown" : holder,
              "): wait for it to end, stop it, or choose another --out");
  }
  // Ours now: record who holds it, for the message of a refused run.
  char when[32] = {};
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  const std::string me = cat("host ", host_name(), ", pid ", ::getpid(), ", since ", when, "\n");
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != ssize_t(me.size())) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    fail_user("cannot write the lock file ", path, ": ", std::strerror(err));
  }
}

bool RunLock::still_ours() const {
  struct stat st {};
  return ::stat(file(dir_).c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_;
}

void RunLock::check() const {
  if (fd_ < 0 || !identified_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return;
  next_check_ = now + std::chrono::seconds(2);
  if (still_ours()) return;
  fail_user("the lock file ", file(dir_), " of this run was deleted or replaced while the run "
            "held it (was the run directory removed?): stopping, since another `par train` "
            "could now start on this --out and the two would prune each other's checkpoints");
}

RunLock::~RunLock() {
  // A start that fails before it writes anything (a checkpoint of another model, say) leaves
  // no directory it made, rather than one holding only the lock file. Removed while still
  // locked, and only when nothing else is there and the lock file is still this run's (not
  // that of a run started after this one's directory was removed).
  if (made_dir_ && fd_ >= 0 && std::uncaught_exceptions() > 0 && identified_ && still_ours()) {
    std::error_code ec;
    bool only_lock = true;
    for (const auto& e : std::filesystem::directory_iterator(dir_, ec))
      only_lock = only_lock && e.path().filename() == "lock";
    if (!ec && only_lock) {
      std::filesystem::remove(file(dir_), ec);
      std::filesystem::remove(dir_, ec);
    }
  }
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

}  // namespace par
