// Misuse of a run directory (--out): one training run per directory at a time, and a lock
// left by a run that died never blocks the resume.
#include <gtest/gtest.h>
#include <unistd.h>

#include <regex>

#include "checkpoint/checkpoint_dir.h"
#include "launch/run_lock.h"
#include "parallel/mpi_error.h"
#include "tests/par_cli.h"

namespace par {
namespace {

using namespace testing_util;


// A run directory held by a live process (here the test itself) is refused with the
// holder's host and pid, and nothing in it changes; once the holder is gone, it is usable.
TEST(ReliabilityRunDir, BusyDirectoryIsRefusedNamingTheHolder) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 60);
  const std::string out = dir.file("run");
  ASSERT_EQ(run_par(dir, tiny_train_args(data, out, 2)).rc, 0);
  const std::string before = testing_util::tree(out + "/checkpoints") + slurp(out + "/config.ini");
  {
    const RunLock held(out);
    const ParRun r = run_par(dir, tiny_train_args(data, out, 4) + " --resume auto --seed 9");
    EXPECT_USER_ERROR(r, "is in use by another `par train`");
    EXPECT_NE(r.err.find(cat("host ", host_name(), ", pid ", getpid())), std::string::npos) << r.err;
    EXPECT_TRUE(testing_util::tree(out + "/checkpoints") + slurp(out + "/config.ini") == before)
        << "the refused run changed the run directory";
  }
  const ParRun r = run_par(dir, tiny_train_args(data, out, 4) + " --resume auto");
  EXPECT_EQ(r.rc, 0) << r.err;
}

// A run killed with SIGKILL leaves its lock file behind; the kernel has dropped the lock,
// so the resume (as after a crash or a requeue) goes ahead.
TEST(ReliabilityRunDir, LockOfAKilledRunDoesNotBlockTheResume) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 60);
  const std::string out = dir.file("run");
  {
    Background run(cat("'", PAR_BINARY, "' ", tiny_train_args(data, out, 1000000),
                       " --checkpoint-every 5"),
                   dir.file("killed.log"));
    ASSERT_TRUE(testing_util::wait_until([&] { return !latest_checkpoint(out).empty(); }))
        << slurp(dir.file("killed.log"));
    run.signal(SIGKILL);
    EXPECT_EQ(run.wait(), 128 + SIGKILL);
  }
  ASSERT_TRUE(std::filesystem::exists(RunLock::file(out)));
  const int64_t saved = read_manifest(latest_checkpoint(out)).position.step;
  const ParRun r = run_par(dir, tiny_train_args(data, out, int(saved) + 2) + " --resume auto");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
}

// A run whose lock file is taken away (the directory deleted, or the file alone) stops
// within seconds, naming why: another run could otherwise start on the same --out and the
// two would prune each other's checkpoints.
TEST(ReliabilityRunDir, LockFileTakenAwayStopsTheRun) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 60);
  for (const bool whole_dir : {false, true}) {
    SCOPED_TRACE(whole_dir ? "run directory removed" : "lock file removed");
    const std::string out = dir.file(whole_dir ? "gone" : "unlocked");
    // No checkpoint is written meanwhile: one could fail first on the removed directory.
    Background run(cat("'", PAR_BINARY, "' ", tiny_train_args(data, out, 100000000),
                       " --checkpoint-every 0 --checkpoint-minutes 0"),
                   dir.file("taken.log"));
    ASSERT_TRUE(testing_util::wait_until(
        [&] { return !testing_util::logged_losses(out + "/metrics.jsonl").empty(); }))
        << slurp(dir.file("taken.log"));
    if (whole_dir)
      std::filesystem::remove_all(out);
    else
      std::filesystem::remove(RunLock::file(out));
    EXPECT_EQ(run.wait(), 2);
    EXPECT_NE(slurp(dir.file("taken.log"))
                  .find(cat("par train: error: the lock file ", RunLock::file(out),
                            " of this run was deleted or replaced")),
              std::string::npos)
        << slurp(dir.file("taken.log"));
  }
}

// A file system without file locks: the run warns that nothing stops a second run, and
// goes on (the lock file's identity is still watched; it was taken for a replaced one).
TEST(ReliabilityRunDir, FileSystemWithoutLocksWarnsAndTrains) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 60);
  const ParRun r = run_shell(dir, cat("LD_PRELOAD='", PAR_NO_FILE_LOCKS, "' '", PAR_BINARY, "' ",
                                      tiny_train_args(data, dir.file("run"), 3)));
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("has no file locks"), std::string::npos) << r.err;
  EXPECT_FALSE(latest_checkpoint(dir.file("run")).empty());
}

// Two trainings started together on one --out, three times: one trains, the other is
// refused (busy, or, if it came second, the finished run's checkpoint), and what is left
// is the winner's run, intact.
TEST(ReliabilityRunDir, ConcurrentRunsOnOneDirectory) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 60);
  int busy = 0;
  for (int trial = 0; trial < 3; ++trial) {
    SCOPED_TRACE(cat("trial ", trial));
    const std::string out = dir.file(cat("run", trial));
    std::string both;
    for (int seed : {1, 2})
      both += cat("('", PAR_BINARY, "' ", tiny_train_args(data, out, 150), " --seed ", seed,
                  " --checkpoint-every 10 2>", quote(dir.file(cat("err", seed))),
                  "; echo $? >", quote(dir.file(cat("rc", seed))), ") & ");
    ASSERT_EQ(run_shell(dir, both + "wait").rc, 0);
    const int rc1 = std::stoi(slurp(dir.file("rc1"))), rc2 = std::stoi(slurp(dir.file("rc2")));
    ASSERT_TRUE((rc1 == 0) != (rc2 == 0)) << "exit statuses " << rc1 << ", " << rc2;
    const int winner = rc1 == 0 ? 1 : 2;
    const std::string loser_err = slurp(dir.file(cat("err", 3 - winner)));
    EXPECT_EQ(rc1 + rc2, 2) << loser_err;
    const bool refused_busy = loser_err.find("is in use by another") != std::string::npos;
    busy += refused_busy;
    EXPECT_TRUE(refused_busy || loser_err.find("already holds a checkpoint") != std::string::npos)
        << loser_err;
    const std::string last = latest_checkpoint(out);
    ASSERT_EQ(last, checkpoint_dir(out, 150));
    const ParRun inspect = run_par(dir, cat("inspect ", quote(last)));
    EXPECT_EQ(inspect.rc, 0) << inspect.err;
    EXPECT_EQ(read_manifest(last).position.seed, uint64_t(winner));
    EXPECT_TRUE(std::regex_search(slurp(out + "/config.ini"),
                                  std::regex(cat("\nseed = ", winner, "\n"))))
        << slurp(out + "/config.ini");
  }
  EXPECT_GT(busy, 0) << "the two runs never overlapped: the lock was not exercised";
}

// --out a run's checkpoints folder (for the run itself) made a second run inside the
// first; now it is refused, naming the run to resume, and nothing there changes. A run
// elsewhere inside another's directory (a fine-tune) is fine. --resume auto where no
// checkpoint is yet says it starts afresh.
TEST(ReliabilityRunDir, OutInsideARunsCheckpointsIsRefused) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 30);
  const std::string out = dir.file("run");
  const ParRun first = run_par(dir, tiny_train_args(data, out, 2) + " --resume auto");
  ASSERT_EQ(first.rc, 0) << first.err;
  EXPECT_NE(first.err.find("--resume auto: no checkpoint in " + out +
                           "/checkpoints yet: starting at step 0"),
            std::string::npos)
      << first.err;
  const std::string before = tree(out);
  for (const std::string& inner : {out + "/checkpoints", out + "/checkpoints/new"}) {
    SCOPED_TRACE(inner);
    EXPECT_USER_ERROR(run_par(dir, tiny_train_args(data, inner, 2) + " --resume auto"),
                      cat("--out ", inner, " is inside the checkpoints of the run ", out,
                          ": to continue that run, pass --out ", out, " --resume auto"));
  }
  EXPECT_EQ(tree(out), before);
  const ParRun nested = run_par(dir, tiny_train_args(data, out + "/fine-tune", 2));
  EXPECT_EQ(nested.rc, 0) << nested.err;
}

}  // namespace
}  // namespace par
