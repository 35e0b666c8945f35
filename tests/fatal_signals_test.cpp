// The line a fatal signal leaves (core/fatal_signals.h): with the context of what crashed, or
// asking for a bug report; then the handler that was there before, or the default action.
// And end to end: a shard whose string heap is damaged, which HDF5 1.10 crashes on, ends
// `par train` with one line naming the file (or, with an HDF5 that refuses it, an error
// that names it).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <string>

#include "core/fatal_signals.h"
#include "tests/par_cli.h"

namespace par {
namespace {

using namespace testing_util;

struct Death {
  int signal = 0;       // the signal that ended the child, or 0
  int exit_status = -1;  // its exit status when it exited
  std::string err;       // what it wrote to stderr
};

// Runs `body` in a child process whose stderr is captured.
Death in_child(const std::function<void()>& body) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    body();
    _exit(0);
  }
  close(fds[1]);
  Death d;
  char buf[512];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) d.err.append(buf, size_t(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) d.signal = WTERMSIG(status);
  if (WIFEXITED(status)) d.exit_status = WEXITSTATUS(status);
  return d;
}

extern "C" void previous_handler(int) {
  const char line[] = "the previous handler ran\n";
  (void)!write(STDERR_FILENO, line, sizeof line - 1);
  _exit(7);
}

TEST(FatalSignals, OneLineWithTheContextThenTheDefaultAction) {
  const Death d = in_child([] {
    signal(SIGSEGV, SIG_DFL);
    install_fatal_signal_message();
    install_fatal_signal_message();  // idempotent: not its own previous handler
    const CrashContext outer("reading file a.h5: dataset 'x'");
    { const CrashContext inner("reading file b.h5: attribute 'format'"); }
    raise(SIGSEGV);
  });
  EXPECT_EQ(d.signal, SIGSEGV) << d.err;
  EXPECT_EQ(d.err,
            "par: died of SIGSEGV (a bad memory access) while reading file a.h5: dataset 'x': a "
            "damaged file can crash HDF5; check that file (h5dump), or replace it\n");
}

TEST(FatalSignals, WithoutAContextAskForABugReportThenCallThePreviousHandler) {
  const Death d = in_child([] {
    signal(SIGBUS, previous_handler);  // as an MPI library's stack trace would be
    install_fatal_signal_message();
    raise(SIGBUS);
  });
  EXPECT_EQ(d.exit_status, 7) << d.err;
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
