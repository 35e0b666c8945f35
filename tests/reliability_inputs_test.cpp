// Bad input that used to pass silently: each gets a clear refusal (exit 2 and a message
// naming the option) or a documented meaning, and nothing is written.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

// A directory given as --config read as an empty file: the default model trained, exit 0.
TEST(ReliabilityInputs, ConfigThatIsADirectory) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  for (const std::string& cmd : {cat("train --data ", quote(data), " --out ", quote(dir.file("run")),
                                     " --steps 1"),
                                 std::string("bench --steps 1")}) {
    SCOPED_TRACE(cmd);
    const ParRun r = run_par(dir, cat(cmd, " --config ", quote(dir.path)));
    EXPECT_USER_ERROR(r, cat("config file ", dir.path, " (--config) is a directory"));
  }
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

}  // namespace
}  // namespace par
