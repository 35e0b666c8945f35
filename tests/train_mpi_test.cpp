// `par train` as an MPI job (mpirun, oversubscribed on this machine's cores): a layout
// that does not fit is reported by every rank; an error on one rank mid-training, or a
// rank killed, ends the whole job quickly with a non-zero status; and every layout
// trains to the same losses as one process.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <regex>
#include <sstream>
#include <thread>

#include "checkpoint/model_file.h"
#include "data/h5.h"
#include "data/prep.h"
#include "tests/par_cli.h"

namespace par {
namespace {

using testing_util::ParRun;
using testing_util::run_par;
using testing_util::slurp;
using testing_util::TempDir;

using testing_util::run_shell;
using testing_util::mpirun;
using testing_util::logged_losses;

const std::string kConfigs = testing_util::configs_dir();
std::string q(const std::string& s) { return testing_util::quote(s); }
std::string copy_data(const TempDir& dir, int64_t length, int64_t examples) {
  return testing_util::copy_task_data(dir, length, examples);
}
std::vector<std::string> losses(const std::string& metrics) { return logged_losses(metrics); }

// Every rank finds the same fault: said once, for all of them (it was one line per rank,
// 32 lines on 32 ranks).
TEST(TrainMpi, LayoutThatDoesNotFitIsReportedOnceForEveryRank) {
  TempDir dir;
  const std::string data = copy_data(dir, 65, 40);
  const std::string base = cat("train --config ", q(kConfigs + "tiny.ini"), " --data ", q(data),
                               " --out ", q(dir.file("run")));
  auto errors = [](const std::string& err) {
    int64_t n = 0;
    for (size_t at = err.find("error: "); at != std::string::npos; at = err.find("error: ", at + 1))
      ++n;
    return n;
  };
  ParRun r = run_shell(dir, mpirun(3, base + " --sp 2"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("par train: error: all 3 ranks: "), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("on host"), std::string::npos) << r.err;
  EXPECT_EQ(errors(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("--sp 2"), std::string::npos) << r.err;

  r = run_shell(dir, mpirun(2, base + " --tp 2 --d-model 33 --cross-heads 3 --self-heads 3"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("par train: error: all 2 ranks: "), std::string::npos) << r.err;
  EXPECT_EQ(errors(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("--tp 2 does not divide --cross-heads 3"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir.file("run/checkpoints"))) << "a failed start wrote a checkpoint";

  // A run too large for any machine: each rank's plan counts the same memory in use, so
  // the refusal is one message for all.
  r = run_shell(dir, mpirun(2, base + " --sp 2 --context-length 1048576 --num-latents 64 "
                                      "--batch-size 4096 --dry-run"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("par train: error: all 2 ranks: not enough memory"), std::string::npos)
      << r.err;
  EXPECT_EQ(errors(r.err), 1) << r.err;
}

// A bad token in the second half of a window: only sequence rank 1 reads it.
// The one-process commands refuse to run as several ranks (each would write the same files
// and print every result again), once, and write nothing; train and bench run there.
TEST(TrainMpi, OneProcessCommandsRefuseSeveralRanks) {
  TempDir dir;
  const std::string data = copy_data(dir, 65, 40);
  ASSERT_EQ(run_par(dir, testing_util::tiny_train_args(data, dir.file("run"), 1)).rc, 0);
  for (const std::string& c :
       {cat("export --checkpoint ", q(dir.file("run")), " --out ", q(dir.file("m.h5"))),
        cat("prep copy --out ", q(dir.file("more")), " --length 65 --examples 4"),
        cat("eval --checkpoint ", q(dir.file("run")), " --data ", q(data)),
        cat("sample --checkpoint ", q(dir.file("run")), " --tokens 2"),
        cat("inspect ", q(dir.file("run")))}) {
    SCOPED_TRACE(c);
    const ParRun r = run_shell(dir, mpirun(2, c));
    EXPECT_NE(r.rc, 0);
    const std::string name = c.substr(0, c.find(' '));
    const std::string said = cat("par ", name, ": error: par ", name, " runs as one process, but "
                                 "it was started as 2 ranks (mpirun or srun)");
    ASSERT_NE(r.err.find(said), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find(said, r.err.find(said) + 1), std::string::npos) << "said twice: " << r.err;
    EXPECT_EQ(r.out, "");
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("m.h5")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("more")));
  // A process alone in a launcher's environment (what one rank's script inherits) goes on
  // when it says so.
  const std::string inspect = cat("inspect ", q(dir.file("run")));
  ParRun r = run_shell(dir, cat("OMPI_COMM_WORLD_SIZE=2 '", PAR_BINARY, "' ", inspect));
  EXPECT_NE(r.rc, 0);
  r = run_shell(dir, cat("OMPI_COMM_WORLD_SIZE=2 PAR_ONE_PROCESS=1 '", PAR_BINARY, "' ", inspect));
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("step-00000001"), std::string::npos) << r.out;
}

// srun names its step's tasks whatever its MPI plugin (PMIx names no size), and a batch
// script's own environment is not a step: the environments below are srun's and sbatch's.
TEST(TrainMpi, SrunStepsAreSeenWithoutPmiSizes) {
  TempDir dir;
  const std::string data = copy_data(dir, 65, 40);
  ASSERT_EQ(run_par(dir, testing_util::tiny_train_args(data, dir.file("run"), 1)).rc, 0);
  const std::string par = cat("'", PAR_BINARY, "' ");
  const std::string inspect = cat("inspect ", q(dir.file("run")));
  // srun --mpi=pmix -n 2: task 0 refuses for both, task 1 quietly.
  ParRun r = run_shell(dir, cat("PMIX_RANK=0 SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=0 ", par, inspect));
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("par inspect runs as one process, but it was started as 2 ranks"),
            std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
  r = run_shell(dir, cat("PMIX_RANK=1 SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=1 ", par, inspect));
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out, "");
  // The batch script itself (SLURM_NTASKS but no step) runs one-process commands.
  r = run_shell(dir, cat("SLURM_NTASKS=2 SLURM_PROCID=0 ", par, inspect));
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("step-00000001"), std::string::npos) << r.out;

  // srun -n 2 without an MPI plugin: the tasks cannot form one job, and would each train
  // alone into the same run. Task 0 says how to start them; nothing is written.
  const std::string train = testing_util::tiny_train_args(data, dir.file("run2"), 1);
  r = run_shell(dir, cat("SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=0 ", par, train));
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("par train: error: srun started 2 tasks, but without an MPI plugin each "
                       "is alone: start it with srun --mpi=pmix"),
            std::string::npos) << r.err;
  r = run_shell(dir, cat("SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=1 ", par, train));
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(r.err, "");
  EXPECT_FALSE(std::filesystem::exists(dir.file("run2")));
  // A sweep whose tasks each train alone, on purpose, says so.
  r = run_shell(dir, cat("SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=1 PAR_ONE_PROCESS=1 ", par, train));
  EXPECT_EQ(r.rc, 0) << r.err;
}

TEST(TrainMpi, ErrorOnOneRankEndsTheJob) {
  TempDir dir;
  const std::string bad = dir.file("bad.h5");
  {
    std::vector<int32_t> t(65 * 20, 7);
    t[65 * 3 + 50] = 400;  // window 3, column 50 (sp 2: rank 1 holds columns 32..64)
    h5::Object f = h5::create_file(bad);
    h5::write_attribute<std::string>(f.id(), "format", "par-tokens-1");
    h5::write_attribute<int64_t>(f.id(), "vocab_size", 259);
    h5::write_dataset<int32_t>(f.id(), "tokens", t.data(), {int64_t(t.size())});
  }
  const auto t0 = std::chrono::steady_clock::now();
  const ParRun r = run_shell(dir, mpirun(2, cat("train --config ", q(kConfigs + "tiny.ini"),
                                                " --data ", q(bad), " --out ", q(dir.file("run")),
                                                " --sp 2 --steps 200 --batch-size 4")));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("rank 1 on host"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("bad.h5"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("400"), std::string::npos) << r.err;
  EXPECT_LT(seconds, 30) << "the job took too long to end";
}

TEST(TrainMpi, KilledRankEndsTheJob) {
  TempDir dir;
  const std::string data = copy_data(dir, 65, 200);
  const std::string cmd =
      mpirun(2, cat("train --config ", q(kConfigs + "tiny.ini"), " --data ", q(data), " --out ",
                    q(dir.file("run")), " --sp 2 --steps 1000000 --log-every 10"));
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setpgid(0, 0);  // its own process group, so the test can always remove the whole job
    execl("/bin/sh", "sh", "-c", cat(cmd, " >'", dir.file("out.txt"), "' 2>&1").c_str(), nullptr);
    _exit(127);
  }
  struct KillGroup {
    pid_t pgid;
    ~KillGroup() { ::kill(-pgid, SIGKILL); }
  } cleanup{child};
  // Wait until training runs (a metrics line), then kill one rank's process.
  const std::string metrics = dir.file("run/metrics.jsonl");
  for (int i = 0; i < 300 && testing_util::logged_losses(metrics).empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_FALSE(testing_util::logged_losses(metrics).empty()) << slurp(dir.file("out.txt"));
  // The ranks' command lines start with the binary (mpirun's and the shells' do not).
  const ParRun pids =
      run_shell(dir, cat("pgrep -f -- ", q(cat("^", PAR_BINARY, " train .*", dir.file("run")))));
  std::istringstream in(pids.out);
  std::vector<pid_t> ranks;
  for (pid_t p; in >> p;) ranks.push_back(p);
  ASSERT_EQ(ranks.size(), 2u) << pids.out;
  const auto t0 = std::chrono::steady_clock::now();
  ::kill(ranks.back(), SIGKILL);
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 600 && done == 0; ++i) {
    done = waitpid(child, &status, WNOHANG);
    if (done == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (done == 0) {
    ::kill(-child, SIGKILL);
    waitpid(child, &status, 0);
    FAIL() << "the job was still running 30 s after a rank was killed";
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << slurp(dir.file("out.txt"));
  EXPECT_LT(seconds, 30);
}

// The layouts of the issue give one process's losses (to float32 rounding) with both
// dropouts on, and the parameters after the steps agree.
TEST(TrainMpi, EveryLayoutTrainsLikeOneProcess) {
  TempDir dir;
  const std::string data = copy_data(dir, 65, 120);
  const std::string base = cat("train --config ", q(kConfigs + "tiny.ini"), " --data ", q(data),
                               " --steps 4 --log-every 1 --batch-size 4 --threads 1");
  ParRun r = run_par(dir, cat(base, " --out ", q(dir.file("one"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto want = losses(dir.file("one/metrics.jsonl"));
  ASSERT_EQ(want.size(), 4u);
  const ModelFile one = read_model_file(dir.file("one"), true);
  struct Layout { int dp, sp, tp; };
  for (const Layout l : {Layout{2, 1, 1}, Layout{1, 2, 1}, Layout{1, 1, 2}, Layout{2, 2, 1},
                         Layout{1, 2, 2}, Layout{2, 2, 2}}) {
    const std::string name = cat("d", l.dp, "s", l.sp, "t", l.tp);
    SCOPED_TRACE(name);
    r = run_shell(dir, mpirun(l.dp * l.sp * l.tp,
                              cat(base, " --out ", q(dir.file(name)), " --dp ", l.dp, " --sp ",
                                  l.sp, " --tp ", l.tp)));
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto got = losses(dir.file(name + "/metrics.jsonl"));
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(std::stod(got[i]), std::stod(want[i]), 1e-6 * std::stod(want[i])) << "step " << i + 1;
    // After 4 Adam steps at lr <= 4e-4 the parameters agree to float32 rounding of the
    // updates: 1e-6 absolute is a few ulps of the largest weights.
    const ModelFile f = read_model_file(dir.file(name + ""), true);
    ASSERT_EQ(f.params.size(), one.params.size());
    double err = 0;
    for (size_t i = 0; i < f.params.size(); ++i)
      err = std::max(err, double(std::abs(f.params[i] - one.params[i])));
    EXPECT_LT(err, 1e-6);
    RecordProperty(name + "_max_param_diff", cat(err));
    // Read one tensor at a time (par inspect's way), the layout's pieces give the same values.
    const std::vector<float>* whole[3] = {&f.params, &f.adam_m, &f.adam_v};
    int visited = 0;
    visit_model_file(dir.file(name), true, [&](int kind, const ParamInfo& p, const float* v) {
      ++visited;
      EXPECT_TRUE(std::equal(v, v + p.numel, whole[kind]->begin() + p.offset))
          << kStateKinds[kind] << " " << p.name;
    });
    EXPECT_EQ(visited, 3 * int(ParamLayout(f.model).params().size()));
  }
}

// Absolute positions (spec/MODEL.md section 13): 65-token examples in 64-token windows, so
// windows begin inside documents and hold an EOS; each sequence rank's loader gives the
// document position its slice continues from, and validation does the same.
TEST(TrainMpi, AbsolutePositionsOnEveryLayout) {
  TempDir dir;
  const std::string data = copy_data(dir, 65, 120);
  const std::string base =
      cat("train --config ", q(kConfigs + "tiny.ini"), " --data ", q(data), " --val-data ",
          q(dir.file("data/val-*.h5")), " --steps 3 --log-every 1 --batch-size 4 --threads 1",
          " --eval-tokens 0");
  const std::string absolute = base + " --position-encoding absolute";
  ParRun r = run_par(dir, cat(absolute, " --out ", q(dir.file("one"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::regex val("\"val_loss\": ([0-9.]+)");
  auto val_loss = [&](const std::string& run) {
    std::smatch m;
    const std::string text = slurp(dir.file(run + "/metrics.jsonl"));
    return std::regex_search(text, m, val) ? std::stod(m[1]) : -1.0;
  };
  const auto want = losses(dir.file("one/metrics.jsonl"));
  ASSERT_EQ(want.size(), 3u);
  struct Layout { const char* name; int ranks; const char* options; };
  for (const Layout l : {Layout{"s2", 2, "--sp 2"}, Layout{"s2t2", 4, "--sp 2 --tp 2"},
                         Layout{"d2s2", 4, "--dp 2 --sp 2"}}) {
    SCOPED_TRACE(l.options);
    const std::string name = l.name;
    r = run_shell(dir, mpirun(l.ranks, cat(absolute, " --out ", q(dir.file(name)), " ", l.options)));
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto got = losses(dir.file(name + "/metrics.jsonl"));
    ASSERT_EQ(got.size(), 3u);
    for (size_t i = 0; i < 3; ++i)
      EXPECT_NEAR(std::stod(got[i]), std::stod(want[i]), 1e-6 * std::stod(want[i]));
    EXPECT_NEAR(val_loss(name), val_loss("one"), 1e-5 * val_loss("one"));
  }
  // Positions matter: the same run with rotary positions has other losses.
  r = run_par(dir, cat(base, " --out ", q(dir.file("rotary"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(losses(dir.file("rotary/metrics.jsonl")), want);
}

// More latents than one sequence slice holds (M = 32 > N/4 = 16): they span two ranks.
TEST(TrainMpi, LatentsSpanningSequenceRanks) {
  TempDir dir;
  const std::string data = copy_data(dir, 65, 120);
  const std::string base = cat("train --config ", q(kConfigs + "tiny.ini"), " --data ", q(data),
                               " --steps 3 --log-every 1 --batch-size 4 --threads 1 --num-latents 32");
  ParRun r = run_par(dir, cat(base, " --out ", q(dir.file("one"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_shell(dir, mpirun(4, cat(base, " --out ", q(dir.file("sp4")), " --sp 4")));
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto want = losses(dir.file("one/metrics.jsonl")), got = losses(dir.file("sp4/metrics.jsonl"));
  ASSERT_EQ(want.size(), 3u);
  ASSERT_EQ(got.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(std::stod(got[i]), std::stod(want[i]), 1e-6 * std::stod(want[i]));
}

}  // namespace
}  // namespace par
