// `par` itself, before any subcommand: its usage, an unknown command, and --version (the
// commit it was built from, which a run's log repeats, for reports and reproductions).
#include <gtest/gtest.h>

#include <regex>
#include <string>

#include "tests/par_cli.h"
#include "tests/temp_dir.h"

namespace par {
namespace {

using testing_util::run_par;
using testing_util::TempDir;

TEST(ParMain, SaysItsVersionUsageAndUnknownCommands) {
  TempDir dir;
  const testing_util::ParRun v = run_par(dir, "--version");
  EXPECT_EQ(v.rc, 0) << v.err;
  const std::regex version(
      "par, (commit [0-9a-f]{12} of [0-9]{4}-[0-9]{2}-[0-9]{2}( \\+ local changes)?|"
      "unknown commit \\(not built from a git checkout\\))\n");
  EXPECT_TRUE(std::regex_match(v.out, version)) << v.out;
  const testing_util::ParRun help = run_par(dir, "--help");
  EXPECT_EQ(help.rc, 0);
  EXPECT_NE(help.out.find("par --version"), std::string::npos) << help.out;
  const testing_util::ParRun bad = run_par(dir, "trian");
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("par: error: unknown command 'trian'"), std::string::npos) << bad.err;
  const testing_util::ParRun none = run_par(dir, "");
  EXPECT_EQ(none.rc, 2);
  EXPECT_EQ(none.out, "");
  EXPECT_NE(none.err.find("par: error: no command given"), std::string::npos) << none.err;
  // train's help ends with its exit statuses, which launch scripts act on.
  const testing_util::ParRun train = run_par(dir, "train --help");
  EXPECT_EQ(train.rc, 0);
  EXPECT_NE(train.out.find("75 stopped early with a checkpoint"), std::string::npos) << train.out;
}

// A run's log opens with the version.
// Output that does not reach its file fails the command (exit 2, one line), whichever
// command printed it.
TEST(ParMain, OutputThatCannotBeWrittenIsAnError) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, testing_util::tiny_train_args(data, dir.file("run"), 1)).rc, 0);
  for (const std::string& c :
       {cat("inspect '", dir.file("run"), "'"),
        cat("sample --checkpoint '", dir.file("run"), "' --tokens 4 --threads 1"),
        cat("eval --checkpoint '", dir.file("run"), "' --data '", data, "' --threads 1")}) {
    SCOPED_TRACE(c);
    const testing_util::ParRun r =
        testing_util::run_shell(dir, cat("{ '", PAR_BINARY, "' ", c, " >/dev/full; }"));
    EXPECT_EQ(r.rc, 2) << r.err;
    const std::string name = c.substr(0, c.find(' '));
    EXPECT_NE(r.err.find(cat("par ", name, ": error: cannot write the output of par ", name,
                             " (standard output)")),
              std::string::npos)
        << r.err;
  }
}

TEST(ParMain, VersionThatCannotBeWrittenIsAnError) {
  TempDir dir;
  const testing_util::ParRun r =
      testing_util::run_shell(dir, cat("{ '", PAR_BINARY, "' --version >/dev/full; }"));
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("par: error: cannot write the output of par --version"), std::string::npos)
      << r.err;
}

TEST(ParMain, TrainingLogsItsVersion) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  const testing_util::ParRun r =
      run_par(dir, testing_util::tiny_train_args(data, dir.file("run"), 1));
  ASSERT_EQ(r.rc, 0) << r.err;
  const testing_util::ParRun v = run_par(dir, "--version");
  const std::string version = v.out.substr(5, v.out.size() - 6);  // "par, X\n" -> X
  const std::string log = testing_util::slurp(dir.file("run/train.log"));
  EXPECT_NE(log.find("par train (" + version + ") | model"), std::string::npos) << log;
}

}  // namespace
}  // namespace par
