// Running part of a test in a child process: for reads of damaged files, which can crash
// HDF5 itself (tests/fatal_signals_test.cpp), and for what a fatal signal leaves, which
// must not take the test binary with them.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>

namespace par::testing_util {

struct ChildResult {
  int status = -1;  // body()'s value as its exit status (0-125), or 128 + the signal that ended it
  std::string err;  // what it wrote to stderr, where captured
};

// Runs body() in a child process, its stderr captured where `capture_stderr`.
inline ChildResult run_in_child(const std::function<int()>& body, bool capture_stderr = false) {
  int fds[2] = {-1, -1};
  if (capture_stderr && pipe(fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    if (capture_stderr) {
      close(fds[0]);
      dup2(fds[1], STDERR_FILENO);
    }
    _exit(body());
  }
  ChildResult r;
  if (capture_stderr) {
    close(fds[1]);
    char buf[512];
    for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) r.err.append(buf, size_t(n));
    close(fds[0]);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return r;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// body()'s status alone (run_in_child).
inline int status_in_child(const std::function<int()>& body) { return run_in_child(body).status; }

}  // namespace par::testing_util
