// launch/resume_changes.h: a resumed run's log says when it reads another data stream than
// the run that wrote its checkpoint (other --data, another --batch-size), and only then.
#include "launch/resume_changes.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "tests/temp_dir.h"

namespace par {
namespace {

const char* kConfig =
    "batch-size = 16\n"
    "data = runs/a/train-*.h5\n"
    "data = extra.h5\n"
    "dropout = 0\n";

RunConfig run_like_the_checkpoint() {
  RunConfig rc;
  rc.batch_size = 16;
  rc.data = {"runs/a/train-*.h5", "extra.h5"};
  return rc;
}

TEST(ResumeChanges, IniValuesReadsRepeatedKeysInOrder) {
  EXPECT_EQ(ini_values(kConfig, "data"),
            (std::vector<std::string>{"runs/a/train-*.h5", "extra.h5"}));
  EXPECT_EQ(ini_values(kConfig, "batch-size"), std::vector<std::string>{"16"});
  EXPECT_TRUE(ini_values(kConfig, "val-data").empty());
  // "batch" is not "batch-size": a key matches whole.
  EXPECT_TRUE(ini_values(kConfig, "batch").empty());
}

TEST(ResumeChanges, TheSameStreamSaysNothing) {
  EXPECT_TRUE(data_stream_changes(kConfig, run_like_the_checkpoint(), 100).empty());
  // A checkpoint without config.ini (written by hand, or an older par): nothing to compare.
  RunConfig other = run_like_the_checkpoint();
  other.data = {"elsewhere.h5"};
  EXPECT_TRUE(data_stream_changes("", other, 100).empty());
}

TEST(ResumeChanges, OtherDataIsNamedWithWhereReadingGoesOn) {
  RunConfig rc = run_like_the_checkpoint();
  rc.data = {"runs/b/train-*.h5"};
  const auto w = data_stream_changes(kConfig, rc, 100);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0],
            "--data runs/b/train-*.h5 differs from that of the run that wrote the checkpoint "
            "(runs/a/train-*.h5 extra.h5): training goes on over the new data, at example 1600 "
            "of its order");
  // The same patterns in another order are another stream (the shards' order is the order's).
  rc.data = {"extra.h5", "runs/a/train-*.h5"};
  EXPECT_EQ(data_stream_changes(kConfig, rc, 100).size(), 1u);
}

// The same shards spelled otherwise (a glob or its files, a path through ..) are the same
// stream; the same files in another order are not.
TEST(ResumeChanges, TheSameShardsHoweverSpelledSayNothing) {
  testing_util::TempDir dir;
  std::ofstream(dir.file("train-0.h5")) << "x";
  std::ofstream(dir.file("train-1.h5")) << "x";
  RunConfig rc = run_like_the_checkpoint();
  const std::string config = cat("batch-size = 16\ndata = ", dir.file("train-*.h5"), "\n");
  const std::string roundabout =
      cat(dir.path, "/../", std::filesystem::path(dir.path).filename().string(), "/train-1.h5");
  rc.data = {dir.file("train-0.h5"), roundabout};
  EXPECT_TRUE(data_stream_changes(config, rc, 10).empty());
  rc.data = {dir.file("train-1.h5"), dir.file("train-0.h5")};
  EXPECT_EQ(data_stream_changes(config, rc, 10).size(), 1u);
  rc.data = {dir.file("train-0.h5")};
  EXPECT_EQ(data_stream_changes(config, rc, 10).size(), 1u);
}

TEST(ResumeChanges, AnotherBatchSizeSaysWhatIsSkippedOrReadAgain) {
  RunConfig rc = run_like_the_checkpoint();
  rc.batch_size = 32;
  auto w = data_stream_changes(kConfig, rc, 10);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0],
            "--batch-size 32 differs from that of the run that wrote the checkpoint (16): "
            "reading goes on at example 320 of the data's order, where that run had read 160 "
            "(the examples between are skipped)");
  rc.batch_size = 8;
  w = data_stream_changes(kConfig, rc, 10);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("at example 80 of the data's order, where that run had read 160 (the "
                      "examples between are read again)"),
            std::string::npos)
      << w[0];
  rc.data = {"other.h5"};
  EXPECT_EQ(data_stream_changes(kConfig, rc, 10).size(), 2u);
}

// A cosine run extended on resume: the rate's jump is said, with both rates; the same
// --steps, or a constant schedule, says nothing.
TEST(ResumeChanges, ACosineScheduleOverOtherStepsIsSaid) {
  OptimizerConfig c;
  c.lr = 1e-3;
  c.schedule = "cosine";
  c.total_steps = 80;
  const std::string config = "steps = 60\n";
  EXPECT_EQ(schedule_change(config, c, 60),
            "--steps 80 differs from that of the run that wrote the checkpoint (60): the cosine "
            "schedule now decays over 80 steps, and the learning rate of step 61 is 0.000133 "
            "where it was to be 0");
  c.total_steps = 60;
  EXPECT_EQ(schedule_change(config, c, 30), "");
  c.total_steps = 80;
  c.schedule = "constant";
  EXPECT_EQ(schedule_change(config, c, 30), "");
}

TEST(ResumeChanges, ScheduleSettingsThatDoNothingAreNamed) {
  OptimizerConfig c;
  c.warmup_steps = 10;
  c.total_steps = 5;
  c.schedule = "cosine";
  auto notes = schedule_notes(c, false);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("--warmup-steps 10 is longer than --steps 5: the learning rate never "
                          "reaches --lr"),
            std::string::npos);
  c.total_steps = 10;  // the last step reaches --lr, but nothing is left to decay
  notes = schedule_notes(c, false);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("is as long as --steps: the cosine schedule never decays"),
            std::string::npos);
  c.schedule = "constant";
  EXPECT_TRUE(schedule_notes(c, false).empty());
  c.warmup_steps = 0;
  c.schedule = "constant";
  EXPECT_TRUE(schedule_notes(c, false).empty());
  notes = schedule_notes(c, true);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("--min-lr is the floor of the cosine schedule"), std::string::npos);
}

}  // namespace
}  // namespace par
