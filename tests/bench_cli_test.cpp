// `par bench`'s command line: it times 3 steps unless its own command line says --steps,
// whatever the config's training length (a config's steps once made `bench --config
// bytes.ini` time 20,000 steps).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "tests/par_cli.h"
#include "tests/temp_dir.h"

namespace par {
namespace {

using testing_util::quote;
using testing_util::run_par;
using testing_util::TempDir;

TEST(BenchCli, TimesThreeStepsUnlessItsCommandLineSaysOtherwise) {
  TempDir dir;
  const std::string tiny = quote(testing_util::configs_dir() + "tiny.ini");  // steps = 50
  const std::string base = cat("bench --config ", tiny, " --threads 1 --warmup 0 --gemm-size 64");
  const testing_util::ParRun three = run_par(dir, base);
  ASSERT_EQ(three.rc, 0) << three.err;
  EXPECT_NE(three.out.find(" mean of 3 "), std::string::npos) << three.out;
  const testing_util::ParRun two = run_par(dir, base + " --steps 2");
  ASSERT_EQ(two.rc, 0) << two.err;
  EXPECT_NE(two.out.find(" mean of 2 "), std::string::npos) << two.out;
  EXPECT_EQ(two.err.find("not used by the bench"), std::string::npos) << two.err;
  // Train's options that the bench has no use for are named, not silently dropped.
  const testing_util::ParRun unused =
      run_par(dir, base + " --steps 1 --out " + quote(dir.file("run")) + " --resume auto");
  ASSERT_EQ(unused.rc, 0) << unused.err;
  EXPECT_NE(unused.err.find("par bench: warning: --out, --resume: train's option(s), not used by the "
                            "bench"),
            std::string::npos)
      << unused.err;
  EXPECT_FALSE(std::filesystem::exists(dir.file("run")));
}

// The help shows the bench's own defaults and leaves out train's options it ignores; values
// it cannot use are errors, and options --decode does not use are named.
TEST(BenchCli, HelpAndOptionsAreTheBenchs) {
  TempDir dir;
  const testing_util::ParRun help = run_par(dir, "bench --help");
  ASSERT_EQ(help.rc, 0);
  EXPECT_NE(help.out.find("--steps arg (=3)"), std::string::npos) << help.out;
  for (const char* gone : {"--data ", "--out ", "--resume ", "--eval-every ", "--keep-checkpoints "})
    EXPECT_EQ(help.out.find(gone), std::string::npos) << gone << "\n" << help.out;
  EXPECT_NE(help.out.find("--decode "), std::string::npos) << help.out;
  const std::string base =
      cat("bench --config ", quote(testing_util::configs_dir() + "tiny.ini"), " --threads 1");
  EXPECT_USER_ERROR(run_par(dir, base + " --decode -1"), "--decode must be a number of tokens");
  EXPECT_USER_ERROR(run_par(dir, base + " --warmup -1"), "--warmup must be 0 or more");
  const testing_util::ParRun decode = run_par(dir, base + " --decode 4 --steps 5 --sp 2");
  ASSERT_EQ(decode.rc, 0) << decode.err;
  EXPECT_NE(decode.err.find("par bench: warning: --steps, --sp: not used with --decode"), std::string::npos)
      << decode.err;
}

}  // namespace
}  // namespace par
