// Signals: Ctrl-C checkpoints like SIGTERM; a signal while a run starts is not fatal; the
// launch script passes 75 on when mpirun itself was signalled; a rank blocked in a
// collective leaves soon after its peer's death, and after --collective-timeout when its
// peer hangs.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>

#include "checkpoint/checkpoint_dir.h"
#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

std::string train_args(const std::string& data, const std::string& out, int steps) {
  return tiny_train_args(data, out, steps) + " --log-every 1";
}

// The signals whose handlers a process has installed (SigCgt of /proc/PID/status).
uint64_t caught_signals(pid_t pid) {
  std::ifstream in(cat("/proc/", pid, "/status"));
  for (std::string line; std::getline(in, line);)
    if (line.rfind("SigCgt:", 0) == 0) return std::stoull(line.substr(7), nullptr, 16);
  return 0;
}

bool catches(uint64_t mask, int sig) { return (mask >> (sig - 1)) & 1; }

// Whether the process runs still (not gone, not a zombie waiting to be reaped).
bool running(pid_t pid) {
  const std::string stat = slurp(cat("/proc/", pid, "/stat"));
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

// Ctrl-C on a single process ended it (status 130) without a checkpoint. Now it stops like
// SIGTERM: a checkpoint, exit 75, the stop noted in $PAR_STOP_FILE, and the resume finishes.
TEST(ReliabilitySignals, CtrlCCheckpointsAndExits75) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 60);
  const std::string out = dir.file("run"), stop_file = dir.file("stopped");
  Background run(cat("env PAR_STOP_FILE=", quote(stop_file), " '", PAR_BINARY, "' ",
                     train_args(data, out, 1000000)),
                 dir.file("log.txt"));
  ASSERT_TRUE(wait_until([&] { return logged_losses(out + "/metrics.jsonl").size() >= 3; }))
      << slurp(dir.file("log.txt"));
  run.signal(SIGINT);
  ASSERT_EQ(run.wait(), 75) << slurp(dir.file("log.txt"));
  const std::string saved = latest_checkpoint(out);
  ASSERT_FALSE(saved.empty());
  const int64_t step = read_manifest(saved).position.step;
  EXPECT_EQ(slurp(stop_file), cat("75 step ", step, "\n"));
  const ParRun r = run_par(dir, train_args(data, out, int(step) + 2) + " --resume auto");
  EXPECT_EQ(r.rc, 0) << r.err;
}

// The handlers are in place before the run directory exists, i.e. while the run is still
// starting (here: checking 40 shards); a signal then ends it with 75 at once, without
// training and without a fatal default action.
TEST(ReliabilitySignals, SignalWhileStartingIsNotFatal) {
  TempDir dir;
  MirrorPrepOptions o;
  o.length = 65;
  o.examples = 400;
  o.reverse = false;
  o.common.out_dir = dir.file("data");
  o.common.shard_tokens = 650;
  std::ostringstream log;
  prep_mirror(o, log);
  const std::string out = dir.file("run");
  Background run(cat("'", PAR_BINARY, "' ", train_args(o.common.out_dir + "/train-*.h5", out, 1000),
                     " --val-data ", quote(o.common.out_dir + "/val-*.h5")),
                 dir.file("log.txt"));
  uint64_t mask = 0;
  ASSERT_TRUE(wait_until([&] {
    mask = caught_signals(run.pid());
    return catches(mask, SIGTERM) || fs::exists(out);
  }, 30));
  const bool starting = !fs::exists(out);
  run.signal(SIGTERM);
  EXPECT_TRUE(starting) << "the handlers came only once the run directory existed";
  EXPECT_TRUE(catches(mask, SIGUSR1) && catches(mask, SIGINT));
  EXPECT_EQ(run.wait(), 75) << slurp(dir.file("log.txt"));
}

// launch/par-mpirun.sh signalled as a whole process group (as batch systems and a shell's
// Ctrl-C do): mpirun, signalled itself, exits 1 though the ranks stopped with a
// checkpoint; the script now exits 75.
TEST(ReliabilitySignals, LaunchScriptPassesSeventyFiveOn) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 60);
  const std::string out = dir.file("run");
  // Few log lines: once signalled, mpirun stops reading the ranks' output, and a rank
  // logging every step would block on the full pipe before reaching a step boundary.
  Background run(cat("'", PAR_SOURCE_DIR, "/launch/par-mpirun.sh' --par '", PAR_BINARY,
                     "' -n 2 --oversubscribe --kill-timeout 1 -- ",
                     tiny_train_args(data, out, 1000000), " --log-every 50 --dp 2 --batch-size 4",
                     " </dev/null"),
                 dir.file("log.txt"));
  ASSERT_TRUE(wait_until([&] { return !logged_losses(out + "/metrics.jsonl").empty(); }))
      << slurp(dir.file("log.txt"));
  ::kill(-run.pid(), SIGTERM);
  EXPECT_EQ(run.wait(), 75) << slurp(dir.file("log.txt"));
  EXPECT_FALSE(latest_checkpoint(out).empty());
}

// Two ranks of a training run (sp 2) that has logged a few steps, and the seconds until
// the first one has ended after `hit` was done to the second.
struct TwoRanks {
  TempDir dir;
  std::string out = dir.file("run");
  std::unique_ptr<Background> run;
  std::vector<pid_t> ranks;

  explicit TwoRanks(const std::string& extra) {
    const std::string data = copy_task_data(dir, 65, 60);
    run = std::make_unique<Background>(
        cat("mpirun --oversubscribe --allow-run-as-root -np 2 -x OMP_WAIT_POLICY=passive "
            "--mca odls_base_sigkill_timeout 5 '", PAR_BINARY, "' ",
            train_args(data, out, 1000000), " --sp 2", extra),
        dir.file("log.txt"));
    if (!wait_until([&] { return logged_losses(out + "/metrics.jsonl").size() >= 3; })) return;
    std::istringstream in(run_shell(dir, cat("pgrep -f -- ", quote(cat("^", PAR_BINARY, " train .*", out)))).out);
    for (pid_t p; in >> p;) ranks.push_back(p);
  }
  std::string log() const { return slurp(dir.file("log.txt")); }
  // -1 when the first rank runs still after 30 s.
  double seconds_until_first_ends(const std::function<void()>& hit) const {
    const auto t0 = std::chrono::steady_clock::now();
    hit();
    if (!wait_until([&] { return !running(ranks[0]); }, 30)) return -1;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

// A stop signal to one rank: the whole job checkpoints and exits 75, and what every rank
// agreed on is said once (rank 0), not once per rank.
TEST(ReliabilitySignals, AStopIsSaidOnce) {
  TwoRanks job("");
  ASSERT_EQ(job.ranks.size(), 2u) << job.log();
  ::kill(job.ranks[1], SIGUSR1);
  EXPECT_EQ(job.run->wait(), 75) << job.log();
  const std::string log = job.log();
  auto count = [&](const std::string& what) {
    int n = 0;
    for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("stopping after step"), 1) << log;
  EXPECT_EQ(count("stopped early at step"), 1) << log;
  EXPECT_FALSE(latest_checkpoint(job.out).empty());
}

// One rank killed: the other, blocked in a collective, leaves within 2 s (mpirun itself
// would end it only after its kill timeouts, here 5 s each).
TEST(ReliabilitySignals, RankLeavesSoonAfterItsPeerDies) {
  TwoRanks job("");
  ASSERT_EQ(job.ranks.size(), 2u) << job.log();
  const double seconds = job.seconds_until_first_ends([&] { ::kill(job.ranks[1], SIGKILL); });
  RecordProperty("seconds_to_leave", cat(seconds));
  EXPECT_GE(seconds, 0) << "still running after 30 s";
  EXPECT_LT(seconds, 2.0) << job.log();
}

// One rank hangs (stopped, alive: the peer watch and the launcher see nothing wrong): the
// other, blocked in a collective, leaves once it has waited --collective-timeout, saying
// what it waited for, instead of holding its nodes until the scheduler's time limit.
TEST(ReliabilitySignals, RankLeavesWhenItsPeerHangs) {
  TwoRanks job(" --collective-timeout 2");
  ASSERT_EQ(job.ranks.size(), 2u) << job.log();
  const double seconds = job.seconds_until_first_ends([&] { ::kill(job.ranks[1], SIGSTOP); });
  ::kill(job.ranks[1], SIGKILL);
  RecordProperty("seconds_to_leave", cat(seconds));
  // The timeout, plus at most a quarter of it before the watch looks, plus the time the
  // step took to reach its next collective.
  EXPECT_GT(seconds, 1.5);
  EXPECT_LT(seconds, 6.0);
  const std::string log = job.log();
  EXPECT_NE(log.find("group (2 ranks) has waited"), std::string::npos) << log;
  EXPECT_NE(log.find("longer than --collective-timeout 2: one of them"), std::string::npos) << log;
}

}  // namespace
}  // namespace par
