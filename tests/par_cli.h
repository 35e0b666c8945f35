// Running the real `par` binary from a test: exit status, stdout and stderr.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <string>

#include "tests/temp_dir.h"

namespace par::testing_util {

struct ParRun {
  int rc;
  std::string out, err;
};

// Runs `par ARGS` (ARGS already shell-quoted where needed); output files go in `dir`.
inline ParRun run_par(const TempDir& dir, const std::string& args) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string cmd = cat("'", PAR_BINARY, "' ", args, " >'", out, "' 2>'", err, "'");
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

}  // namespace par::testing_util

// A user error: exit status 2, `part` in the message, and no internal error.
#define EXPECT_USER_ERROR(run, part)                                       \
  do {                                                                     \
    const ::par::testing_util::ParRun r_ = (run);                          \
    EXPECT_EQ(r_.rc, 2) << r_.err;                                         \
    EXPECT_NE(r_.err.find(part), std::string::npos) << r_.err;             \
    EXPECT_EQ(r_.err.find("internal error"), std::string::npos) << r_.err; \
  } while (0)
