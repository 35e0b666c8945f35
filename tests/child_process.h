// Running part of a test in a child process: for reads of damaged files, which can crash
// HDF5 itself (tests/fatal_signals_test.cpp) and must not take the test binary with them.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <functional>

namespace par::testing_util {

// body()'s value as the child's exit status (0-125), or 128 + the signal that ended it.
inline int status_in_child(const std::function<int()>& body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace par::testing_util
