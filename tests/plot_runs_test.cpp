// tools/plot_runs.py on the metrics of real `par train` runs: the PNG is written for one
// run and for several (a resumed one among them, whose repeated steps count once), and a
// malformed metrics.jsonl is refused with exit 2 and a message naming the file and line,
// leaving no picture behind.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/par_cli.h"

namespace par {
namespace {

using testing_util::ParRun;
using testing_util::run_par;
using testing_util::run_shell;
using testing_util::slurp;
using testing_util::TempDir;

std::string q(const std::string& s) { return testing_util::quote(s); }
const std::string kPlot = std::string(PAR_SOURCE_DIR) + "/tools/plot_runs.py";

ParRun plot(const TempDir& dir, const std::string& args) {
  return run_shell(dir, cat(q(kPlot), " ", args));
}

// Width and height from a PNG's IHDR chunk; {0, 0} if `bytes` is not a PNG.
std::pair<uint32_t, uint32_t> png_size(const std::string& bytes) {
  if (bytes.size() < 24 || bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0 ||
      bytes.compare(12, 4, "IHDR") != 0)
    return {0, 0};
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | uint8_t(bytes[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

class PlotRuns : public ::testing::Test {
 protected:
  // Two small runs of configs/tiny.ini with validation: "a" in one go (12 steps), "b"
  // stopped at step 6 and resumed from its checkpoint at step 4, so that steps 5 and 6
  // appear twice in its metrics.jsonl.
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    const std::string data = testing_util::copy_task_data(*dir_, 65, 200);
    const std::string common =
        cat("train --config ", q(testing_util::configs_dir() + "tiny.ini"), " --data ",
            q(data), " --val-data ", q(dir_->file("data/val-*.h5")),
            " --log-every 1 --eval-every 4 --eval-tokens 256 --threads 1");
    ParRun r = run_par(*dir_, cat(common, " --out ", q(dir_->file("a")), " --steps 12"));
    ASSERT_EQ(r.rc, 0) << r.err;
    r = run_par(*dir_, cat(common, " --out ", q(dir_->file("b")), " --steps 6 --checkpoint-every 4"));
    ASSERT_EQ(r.rc, 0) << r.err;
    std::filesystem::remove_all(dir_->file("b/checkpoints/step-00000006"));
    r = run_par(*dir_, cat(common, " --out ", q(dir_->file("b")), " --steps 12 --resume auto"));
    ASSERT_EQ(r.rc, 0) << r.err;
  }
  static void TearDownTestSuite() { delete dir_; }
  static TempDir* dir_;
};
TempDir* PlotRuns::dir_ = nullptr;

TEST_F(PlotRuns, WritesTheLossCurvesOfOneRun) {
  const std::string png = dir_->file("one.png");
  const ParRun r = plot(*dir_, cat(q(dir_->file("a")), " --out ", q(png)));
  ASSERT_EQ(r.rc, 0) << r.err;
  // One training point per step, a validation every 4 steps and at the end.
  EXPECT_NE(r.out.find("a: 12 training points (steps 1-12), 3 validation points, 0 resume(s)"),
            std::string::npos)
      << r.out;
  const auto [w, h] = png_size(slurp(png));
  EXPECT_GT(w, 600u);
  EXPECT_GT(h, 300u);
  EXPECT_FALSE(std::filesystem::exists(png + ".tmp.png"));
}

TEST_F(PlotRuns, ReadsAResumedRunAmongSeveral) {
  const std::string png = dir_->file("both.png");
  // A run may also be named by its metrics.jsonl.
  const ParRun r = plot(*dir_, cat(q(dir_->file("a")), " ", q(dir_->file("b/metrics.jsonl")),
                                   " --out ", q(png), " --title 'two runs'"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("a: 12 training points"), std::string::npos) << r.out;
  // 14 lines of training metrics, steps 5 and 6 twice: 12 points, one resume (at step 4).
  EXPECT_NE(r.out.find("b: 12 training points (steps 1-12), 3 validation points, 1 resume(s)"),
            std::string::npos)
      << r.out;
  EXPECT_GT(png_size(slurp(png)).first, 600u);
}

// Each start of par train is a row of the metrics: the tokens axis takes each part of the
// run at its own batch size, and a rollback leaves out the abandoned line's rows.
TEST_F(PlotRuns, CountsTokensPerPartAndLeavesOutAbandonedSteps) {
  const std::string run = dir_->file("c");
  const std::string common =
      cat("train --config ", q(testing_util::configs_dir() + "tiny.ini"), " --data ",
          q(dir_->file("data/train-*.h5")), " --threads 1 --out ", q(run));
  // 4 steps of 8 x 64 tokens, then 2 of 16 x 64.
  ASSERT_EQ(run_par(*dir_, common + " --steps 4 --checkpoint-every 2 --log-every 1").rc, 0);
  ASSERT_EQ(run_par(*dir_, common + " --steps 6 --batch-size 16 --log-every 1 --resume auto").rc, 0);
  const std::string read_run =
      cat("/usr/bin/python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import plot_runs; "
          "r = plot_runs.Run(sys.argv[2]); print(sorted(r.train), r.resumes, r.tokens(4), "
          "r.tokens(6), r.tokens(8))' ",
          q(std::string(PAR_SOURCE_DIR) + "/tools"), " ", q(run));
  ParRun r = run_shell(*dir_, read_run);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "[1, 2, 3, 4, 5, 6] [4] 2048 4096 6144\n");
  // Back to step 2, at batch 8 again and logging every 3 steps: steps 3..6 of the abandoned
  // line, and its resume at 4, are left out.
  ASSERT_EQ(run_par(*dir_, cat(common, " --steps 8 --log-every 3 --resume ",
                               q(run + "/checkpoints/step-00000002"))).rc, 0);
  r = run_shell(*dir_, read_run);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "[1, 2, 3, 6, 8] [2] 2048 3072 4096\n");
  r = plot(*dir_, cat(q(run), " --out ", q(dir_->file("c.svg"))));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("c: 5 training points (steps 1-8), 0 validation points, 1 resume(s)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(slurp(dir_->file("c.svg")).find("<svg"), std::string::npos);  // as its name says
}

// A run begun by a par that wrote no start rows and resumed by one that does: its first part
// takes config.ini's batch size and train.log's resumes.
TEST_F(PlotRuns, RunsBegunBeforeStartRows) {
  TempDir run;
  std::ofstream(run.file("config.ini")) << "batch-size = 8\ncontext-length = 64\n";
  std::ofstream(run.file("train.log")) << "I1206 resumed from /a b/step-00000001 at step 1 (...)\n";
  std::ofstream(run.file("metrics.jsonl"))
      << "{\"step\": 1, \"loss\": 5.0, \"lr\": 0.001}\n{\"step\": 2, \"loss\": 4.9, \"lr\": 0.001}\n"
      << "{\"step\": 2, \"event\": \"start\", \"resumed_from\": \"x\", \"batch_size\": 16, "
         "\"context_length\": 64}\n{\"step\": 3, \"loss\": 4.8, \"lr\": 0.001}\n";
  const ParRun r = run_shell(
      run, cat("/usr/bin/python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import plot_runs; "
               "r = plot_runs.Run(sys.argv[2]); print(r.resumes, [r.tokens(s) for s in (1, 2, 3)])' ",
               q(std::string(PAR_SOURCE_DIR) + "/tools"), " ", q(run.path)));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "[1, 2] [512, 1024, 2048]\n");
}

TEST_F(PlotRuns, RefusesMalformedMetrics) {
  TempDir bad;
  std::filesystem::copy(dir_->file("a"), bad.path, std::filesystem::copy_options::recursive);
  const std::string metrics = bad.file("metrics.jsonl");
  std::string text = slurp(metrics);
  const std::string png = bad.file("out.png");
  auto expect_refused = [&](const std::string& content, const std::string& message) {
    std::ofstream(metrics, std::ios::trunc) << content;
    const ParRun r = plot(bad, cat(q(bad.path), " --out ", q(png)));
    EXPECT_EQ(r.rc, 2) << r.err;
    EXPECT_NE(r.err.find("plot_runs.py: error: " + metrics + message), std::string::npos)
        << r.err;
    EXPECT_EQ(r.err.find("Traceback"), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(png));
  };
  // A line cut short, as by a crash while writing: the third line.
  const size_t second = text.find('\n', text.find('\n') + 1);
  expect_refused(text.substr(0, second + 1) + "{\"step\": 3, \"loss\": 5.1", " line 3 is not JSON");
  expect_refused("{\"step\": 1, \"loss\": \"low\", \"lr\": 0.1}\n",
                 " line 1: a training row needs a finite number \"loss\"");
  expect_refused("[1, 2]\n", " line 1 is not a JSON object");
  expect_refused("{\"loss\": 5.0, \"lr\": 0.1}\n", " line 1 has no step");
  expect_refused("{\"step\": 2, \"accuracy\": 0.5}\n", " line 1 is neither a training row");
  expect_refused("", " holds no training rows");
  // The good file plots.
  std::ofstream(metrics, std::ios::trunc) << text;
  EXPECT_EQ(plot(bad, cat(q(bad.path), " --out ", q(png))).rc, 0);
  EXPECT_TRUE(std::filesystem::exists(png));
}

}  // namespace
}  // namespace par
