#include "data/checked_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace par {

namespace {

[[noreturn]] void fail_write(const std::string& path, int err) {
  fail_user("cannot write ", path, ": ", std::strerror(err));
}

// All of `n` bytes, through short writes and interruptions; errno on failure.
bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= size_t(w);
  }
  return true;
}

}  // namespace

void write_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_write(path, errno);
  int err = 0;
  if (!write_all(fd, text.data(), text.size()) || ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    // A partial file (or a link standing for it) goes; a device or pipe named by the path
    // itself stays where it is.
    struct stat st{};
    if (::lstat(path.c_str(), &st) == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)))
      ::unlink(path.c_str());
    fail_write(path, err);
  }
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  write_file(tmp, text);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail_user("cannot rename ", tmp, " to ", path, ": ", std::strerror(err));
  }
}

void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_user("cannot open the directory ", dir, ": ", std::strerror(errno));
  const int err = ::fsync(fd) != 0 && errno != EINVAL ? errno : 0;
  ::close(fd);
  if (err != 0) fail_user("cannot sync the directory ", dir, ": ", std::strerror(err));
}

AppendFile::AppendFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_write(path_, errno);
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::append(const std::string& text) {
  const off_t before = ::lseek(fd_, 0, SEEK_END);
  if (write_all(fd_, text.data(), text.size())) return;
  const int err = errno;
  if (before >= 0 && ::ftruncate(fd_, before) != 0) {
    // Nothing more to do: the error below ends the run.
  }
  fail_write(path_, err);
}

}  // namespace par
