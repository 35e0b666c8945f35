// Checkpoint directories end to end, through the binary (and mpirun): exact resume on one
// and four ranks, resuming on another layout, a rank killed while a checkpoint is being
// written, corrupt checkpoints, preemption by signal, pruning, and `par inspect`.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/model_file.h"
#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using testing_util::logged_losses;
using testing_util::mpirun;
using testing_util::ParRun;
using testing_util::quote;
using testing_util::run_par;
using testing_util::run_shell;
using testing_util::slurp;
using testing_util::TempDir;

// tiny.ini has residual and cross-attend dropout on; two micro-batches per step.
std::string train_args(const std::string& data, const std::string& out, int steps) {
  return cat("train --config ", quote(testing_util::configs_dir() + "tiny.ini"), " --data ",
             quote(data), " --out ", quote(out), " --steps ", steps,
             " --log-every 1 --batch-size 4 --accum-steps 2 --threads 1 --seed 5");
}

std::vector<std::string> checkpoint_names(const std::string& out) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out + "/checkpoints", ec))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void expect_same_state(const std::string& a, const std::string& b) {
  const ModelFile x = read_model_file(a, true), y = read_model_file(b, true);
  EXPECT_EQ(x.position.step, y.position.step);
  EXPECT_EQ(x.position.next_batch, y.position.next_batch);
  EXPECT_TRUE(x.params == y.params) << "parameters differ: " << a << " vs " << b;
  EXPECT_TRUE(x.adam_m == y.adam_m && x.adam_v == y.adam_v) << "Adam moments differ";
}

TEST(Checkpoint, ExactResumeOnFourRanks) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 120);
  const std::string layout = " --dp 2 --sp 2";
  ParRun r = run_shell(dir, mpirun(4, train_args(data, dir.file("whole"), 8) + layout));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_shell(dir, mpirun(4, train_args(data, dir.file("split"), 4) + layout));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_shell(dir, mpirun(4, train_args(data, dir.file("split"), 8) + layout + " --resume auto"));
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto whole = logged_losses(dir.file("whole/metrics.jsonl"));
  ASSERT_EQ(whole.size(), 8u);
  EXPECT_EQ(logged_losses(dir.file("split/metrics.jsonl")), whole);
  expect_same_state(dir.file("whole"), dir.file("split"));
  // The pieces were written by several ranks.
  const Manifest m = read_manifest(latest_checkpoint(dir.file("split")));
  std::set<std::string> files;
  for (const auto& e : m.entries) files.insert(e.file);
  EXPECT_EQ(files.size(), 4u);
  EXPECT_EQ(m.dp, 2);
  EXPECT_EQ(m.sp, 2);
}

// Saved on (dp, sp, tp) = (2, 2, 1), continued on (1, 1, 2) and on one process: the
// continued losses equal the uninterrupted run's to float32 rounding (1e-6 relative).
TEST(Checkpoint, ResumesOnAnotherLayout) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 120);
  ParRun r = run_shell(dir, mpirun(4, train_args(data, dir.file("whole"), 8) + " --dp 2 --sp 2"));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_shell(dir, mpirun(4, train_args(data, dir.file("half"), 4) + " --dp 2 --sp 2"));
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto whole = logged_losses(dir.file("whole/metrics.jsonl"));
  ASSERT_EQ(whole.size(), 8u);
  const std::string half = latest_checkpoint(dir.file("half"));
  for (const std::string& layout : {std::string("tp2"), std::string("one")}) {
    SCOPED_TRACE(layout);
    const std::string out = dir.file(layout);
    const std::string args = train_args(data, out, 8) + " --resume " + quote(half);
    r = layout == "tp2" ? run_shell(dir, mpirun(2, args + " --tp 2")) : run_par(dir, args);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.err.find("written by dp 2 x sp 2 x tp 1"), std::string::npos) << r.err;
    const auto got = logged_losses(out + "/metrics.jsonl");
    ASSERT_EQ(got.size(), 4u);
    for (size_t i = 0; i < 4; ++i)
      EXPECT_NEAR(std::stod(got[i]), std::stod(whole[4 + i]), 1e-6 * std::stod(whole[4 + i]))
          << "step " << 5 + i;
  }
}

// A rank killed while a checkpoint is being written (its .tmp directory exists): the
// previous checkpoint stays the newest complete one, and --resume auto continues from it.
TEST(Checkpoint, RankKilledWhileWriting) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 200);
  const std::string out = dir.file("run");
  // A wider model so that each save takes a moment; a checkpoint every step.
  const std::string args = train_args(data, out, 100000) +
                           " --sp 2 --d-model 256 --num-layers 4 --checkpoint-every 1 --keep-checkpoints 50";
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", cat(mpirun(2, args), " >'", dir.file("log.txt"), "' 2>&1").c_str(),
          nullptr);
    _exit(127);
  }
  struct KillGroup {
    pid_t pgid;
    ~KillGroup() { ::kill(-pgid, SIGKILL); }
  } cleanup{child};
  // Wait for a complete checkpoint, then for a save in progress; kill a rank right then.
  std::string in_progress;
  for (int i = 0; i < 60000 && in_progress.empty(); ++i) {
    if (!latest_checkpoint(out).empty())
      for (const auto& name : checkpoint_names(out))
        if (name[0] == '.') in_progress = name;
    if (in_progress.empty()) std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  ASSERT_FALSE(in_progress.empty()) << slurp(dir.file("log.txt"));
  const ParRun pids = run_shell(dir, cat("pgrep -f -- ", quote(cat("^", PAR_BINARY, " train .*", out))));
  std::istringstream in(pids.out);
  pid_t victim = 0;
  in >> victim;
  ASSERT_GT(victim, 0) << pids.out;
  ::kill(victim, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);

  const std::string newest = latest_checkpoint(out);
  ASSERT_FALSE(newest.empty());
  EXPECT_EQ(run_par(dir, cat("inspect ", quote(newest))).rc, 0) << "the newest checkpoint is damaged";
  const int64_t saved = read_manifest(newest).position.step;
  ParRun r = run_shell(dir, mpirun(2, train_args(data, out, int(saved) + 2) +
                                          " --sp 2 --d-model 256 --num-layers 4 --resume auto"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find(cat("resumed from ", newest)), std::string::npos) << r.err;
  for (const auto& name : checkpoint_names(out))
    EXPECT_NE(name[0], '.') << "the unfinished save was not cleaned up: " << name;
}

TEST(Checkpoint, CorruptCheckpointsAreClearErrors) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 60);
  ASSERT_EQ(run_par(dir, train_args(data, dir.file("run"), 2)).rc, 0);
  const std::string good = latest_checkpoint(dir.file("run"));
  const std::string eval_args = cat(" --data ", quote(dir.file("data/val-*.h5")));
  auto broken_copy = [&](const std::string& name) {
    const std::string copy = dir.file(name);
    fs::copy(good, copy, fs::copy_options::recursive);
    return copy;
  };
  // A truncated piece file.
  std::string c = broken_copy("truncated");
  const std::string shard = c + "/shard-00000.h5";
  fs::resize_file(shard, fs::file_size(shard) / 2);
  EXPECT_USER_ERROR(run_par(dir, cat("eval --checkpoint ", quote(c), eval_args)), "shard-00000.h5");
  // Flipped bytes inside the data: the checksums catch it.
  c = broken_copy("flipped");
  {
    std::string bytes = slurp(c + "/shard-00000.h5");
    for (size_t i = bytes.size() - 4096; i < bytes.size() - 2048; ++i) bytes[i] = char(bytes[i] ^ 0x5a);
    std::ofstream(c + "/shard-00000.h5", std::ios::binary) << bytes;
  }
  EXPECT_USER_ERROR(run_par(dir, cat("eval --checkpoint ", quote(c), eval_args)), "corrupt");
  // No completion marker: never a checkpoint.
  c = broken_copy("unfinished");
  fs::remove(c + "/COMPLETE");
  EXPECT_USER_ERROR(run_par(dir, cat("inspect ", quote(c))), "not a complete checkpoint");
  // A manifest that does not match its files (sealed again: intact in itself).
  c = broken_copy("mismatch");
  {
    std::string m = slurp(c + "/manifest.txt");
    m.replace(m.find("shard-00000.h5"), 14, "shard-00009.h5");
    std::ofstream(c + "/manifest.txt") << Manifest::seal(m.substr(0, m.rfind("checksum ")));
  }
  EXPECT_USER_ERROR(run_par(dir, cat("inspect ", quote(c))), "shard-00009.h5");
  // The good one is fine, and inspect prints its tensors.
  const ParRun ok = run_par(dir, cat("inspect ", quote(good)));
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_NE(ok.out.find("params  cross.attn.q.weight"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("written by  dp 1 x sp 1 x tp 1"), std::string::npos) << ok.out;
}

// SIGUSR1 during training: a complete checkpoint, exit status 75, and the same command with
// --resume auto finishes the run exactly as if it had not stopped.
TEST(Checkpoint, PreemptionSignalCheckpointsAndRequeues) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 200);
  ASSERT_EQ(run_par(dir, train_args(data, dir.file("whole"), 300)).rc, 0);
  const std::string cmd = cat("'", PAR_BINARY, "' ", train_args(data, dir.file("run"), 300),
                              " --resume auto");
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    execl("/bin/sh", "sh", "-c", cat("exec ", cmd, " 2>'", dir.file("log.txt"), "'").c_str(), nullptr);
    _exit(127);
  }
  for (int i = 0; i < 3000 && logged_losses(dir.file("run/metrics.jsonl")).size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ::kill(child, SIGUSR1);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << slurp(dir.file("log.txt"));
  ASSERT_EQ(WEXITSTATUS(status), 75) << slurp(dir.file("log.txt"));
  const std::string saved = latest_checkpoint(dir.file("run"));
  ASSERT_FALSE(saved.empty());
  const int64_t step = read_manifest(saved).position.step;
  EXPECT_GT(step, 0);
  EXPECT_LT(step, 300) << "the signal came too late to test anything";
  const ParRun r = run_shell(dir, cmd);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto whole = logged_losses(dir.file("whole/metrics.jsonl"));
  const auto split = logged_losses(dir.file("run/metrics.jsonl"));
  ASSERT_EQ(whole.size(), 300u);
  // The stopped run logged every step it finished, the resumed one the rest.
  EXPECT_EQ(split, whole);
  expect_same_state(dir.file("whole"), dir.file("run"));
}

// --max-minutes: once the wall-clock limit has passed, the run stops at a step boundary the
// way a preemption signal stops it (complete checkpoint, exit status 75), long before its
// --steps are done.
TEST(Checkpoint, TimeLimitCheckpointsAndRequeues) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 200);
  const ParRun r = run_par(dir, train_args(data, dir.file("run"), 40000) + " --max-minutes 0.02");
  ASSERT_EQ(r.rc, 75) << r.err;
  EXPECT_NE(r.err.find("--max-minutes"), std::string::npos) << r.err;
  const std::string saved = latest_checkpoint(dir.file("run"));
  ASSERT_FALSE(saved.empty()) << r.err;
  const int64_t step = read_manifest(saved).position.step;
  EXPECT_GT(step, 0);
  EXPECT_LT(step, 40000);
  EXPECT_EQ(int64_t(logged_losses(dir.file("run/metrics.jsonl")).size()), step);
}

// --checkpoint-minutes: a checkpoint also once that long has passed since the last, so a
// crash costs at most that much; 0 turns it off (here the run ends by --max-minutes). On
// two ranks, rank 0's clock decides for both, in the stop check's collective.
TEST(Checkpoint, CheckpointsByTheClock) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 200);
  for (const auto& [minutes, ranks] : {std::pair{0.01, 1}, {0.0, 1}, {0.01, 2}}) {
    SCOPED_TRACE(cat(minutes, " minutes, ", ranks, " rank(s)"));
    const std::string run = dir.file(cat("run", minutes > 0, "-", ranks));
    // Two ranks get 6 s, not 3: their clock starts before MPI does.
    const std::string args = train_args(data, run, 1000000) + " --max-minutes " +
                             (ranks == 1 ? "0.05" : "0.1") +
                             " --keep-checkpoints 1000 --checkpoint-minutes " + cat(minutes);
    const ParRun r = ranks == 1 ? run_par(dir, args) : run_shell(dir, mpirun(ranks, args + " --dp 2"));
    ASSERT_EQ(r.rc, 75) << r.err;
    const size_t n = checkpoint_names(run).size();
    if (minutes > 0)
      EXPECT_GE(n, 3u) << "3 s or more of training, a checkpoint every 0.6 s and one at the stop";
    else
      EXPECT_EQ(n, 1u) << "only the stop's";
  }
}

TEST(Checkpoint, KeepsTheNewestAndLogsThePause) {
  TempDir dir;
  const std::string data = testing_util::copy_task_data(dir, 65, 60);
  const ParRun r =
      run_par(dir, train_args(data, dir.file("run"), 7) + " --checkpoint-every 2 --keep-checkpoints 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(checkpoint_names(dir.file("run")),
            (std::vector<std::string>{"step-00000006", "step-00000007"}));
  EXPECT_NE(r.err.find("training paused"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("written in"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace par
