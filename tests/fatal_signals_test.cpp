// The line a fatal signal leaves (core/fatal_signals.h): with the context of what crashed, or
// asking for a bug report; then the handler that was there before, or the default action.
// And end to end: a shard whose string heap is damaged, which HDF5 1.10 crashes on, ends
// `par train` with one line naming the file (or, with an HDF5 that refuses it, an error
// that names it).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "core/fatal_signals.h"
#include "tests/child_process.h"
#include "tests/par_cli.h"

namespace par {
namespace {

using namespace testing_util;

extern "C" void previous_handler(int) {
  const char line[] = "the previous handler ran\n";
  (void)!write(STDERR_FILENO, line, sizeof line - 1);
  _exit(7);
}

TEST(FatalSignals, OneLineWithTheContextThenTheDefaultAction) {
  const ChildResult d = run_in_child([] {
    signal(SIGSEGV, SIG_DFL);
    install_fatal_signal_message();
    install_fatal_signal_message();  // idempotent: not its own previous handler
    const CrashContext outer("reading file a.h5: dataset 'x'");
    { const CrashContext inner("reading file b.h5: attribute 'format'"); }
    raise(SIGSEGV);
    return 0;
  }, true);
  EXPECT_EQ(d.status, 128 + SIGSEGV) << d.err;
  EXPECT_EQ(d.err,
            "par: died of SIGSEGV (a bad memory access) while reading file a.h5: dataset 'x': a "
            "damaged file can crash HDF5; check that file (h5dump), or replace it\n");
}

TEST(FatalSignals, WithoutAContextAskForABugReportThenCallThePreviousHandler) {
  const ChildResult d = run_in_child([] {
    signal(SIGBUS, previous_handler);  // as an MPI library's stack trace would be
    install_fatal_signal_message();
    raise(SIGBUS);
    return 0;
  }, true);
  EXPECT_EQ(d.status, 7) << d.err;
  EXPECT_EQ(d.err,
            "par: died of SIGBUS (a bad memory access): a bug in par; please report it with the "
            "command line and the log\nthe previous handler ran\n");
}

// The shard's global heap holds the `format` attribute's string: its object's size made
// 2^63 + 12 makes HDF5 1.10.8 copy past its buffers.
TEST(FatalSignals, ADamagedShardThatCrashesHdf5IsNamed) {
  TempDir dir;
  const std::string pattern = copy_task_data(dir, 65, 10);
  const std::string shard = dir.file("data/train-00000.h5");
  std::string bytes = slurp(shard);
  const size_t heap = bytes.find("GCOL");
  ASSERT_NE(heap, std::string::npos) << "no global heap: the shard's strings are stored otherwise";
  bytes[heap + 31] = char(bytes[heap + 31] ^ 0x80);
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  const ParRun r = run_par(dir, tiny_train_args(pattern, dir.file("run"), 1));
  EXPECT_NE(r.rc, 0);
  const bool crashed = r.err.find("par: died of SIGSEGV") != std::string::npos;
  if (crashed) {
    EXPECT_NE(r.err.find(cat("while reading file ", shard, ": attribute 'format': a damaged "
                             "file can crash HDF5")),
              std::string::npos)
        << r.err;
  } else {
    EXPECT_NE(r.err.find(cat("error: ")), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(shard), std::string::npos) << r.err;
  }
  RecordProperty("hdf5_crashed", crashed ? "yes" : "no");
}

}  // namespace
}  // namespace par
