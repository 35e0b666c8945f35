// Writes under misuse: nothing is written inside a checkpoint, and every write of a run is
// checked: on a full disk the run ends with exit 2, the path and a one-line reason, leaves
// nothing half-made and removes its temporary files.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <regex>

#include "checkpoint/checkpoint_dir.h"
#include "data/checked_file.h"
#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

// `export --force` onto a checkpoint's own shard replaced it; any path inside a checkpoint
// is refused now, with or without --force, and so are prep's and train's --out there.
TEST(ReliabilityWrites, NothingIsWrittenInsideACheckpoint) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 2)).rc, 0);
  const std::string ckpt = latest_checkpoint(dir.file("run"));
  const std::string before = tree(ckpt);
  for (const std::string& target : {ckpt + "/shard-00000.h5", ckpt + "/model.h5",
                                    ckpt + "/sub/model.h5"})
    for (const std::string& force : {std::string(""), std::string(" --force")}) {
      SCOPED_TRACE(target + force);
      EXPECT_USER_ERROR(run_par(dir, cat("export --checkpoint ", quote(dir.file("run")),
                                         " --out ", quote(target), force)),
                        cat("is inside the checkpoint ", ckpt));
    }
  EXPECT_USER_ERROR(run_par(dir, cat("prep copy --out ", quote(ckpt + "/data"),
                                     " --length 65 --examples 10 --force")),
                    "is inside the checkpoint");
  EXPECT_USER_ERROR(run_par(dir, tiny_train_args(data, ckpt + "/run", 1)), "is inside the checkpoint");
  EXPECT_TRUE(tree(ckpt) == before) << "the checkpoint was modified";
  EXPECT_EQ(run_par(dir, cat("inspect ", quote(ckpt))).rc, 0);
}

// A disk of `kib` KiB holding only `free_kib` free (a tmpfs in a mount namespace of its
// own, gone with the command), mounted at dir/disk while `script` runs; afterwards what
// was on it is in dir/after. Null when this machine cannot mount one (not root, no
// CAP_SYS_ADMIN): the test then skips.
std::unique_ptr<ParRun> on_small_disk(const TempDir& dir, int kib, int free_kib,
                                      const std::string& script) {
  const std::string disk = dir.file("disk"), after = dir.file("after");
  fs::create_directories(disk);
  fs::create_directories(after);
  const ParRun probe = run_shell(dir, cat("unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs ",
                                          quote(disk), "'"));
  if (probe.rc != 0) return nullptr;
  const std::string inner =
      cat("mount -t tmpfs -o size=", kib, "k tmpfs ", disk, " && head -c ", (kib - free_kib) * 1024,
          " /dev/zero >", disk, "/fill && { ", script, "; }; rc=$?; rm ", disk, "/fill; cp -a ",
          disk, "/. ", after, "/; exit $rc");
  return std::make_unique<ParRun>(run_shell(dir, cat("unshare -m sh -c ", quote(inner))));
}

// `par train` of the tiny model into dir/disk/run on such a disk (at most a minute).
std::unique_ptr<ParRun> train_on_small_disk(const TempDir& dir, int kib, int free_kib, int steps,
                                            const std::string& extra = "") {
  const std::string data = copy_task_data(dir, 65, 30);
  return on_small_disk(dir, kib, free_kib,
                       cat("timeout -s KILL 60 '", PAR_BINARY, "' ",
                           tiny_train_args(data, dir.file("disk/run"), steps), " ", extra));
}

#define SKIP_WITHOUT_SMALL_DISK(r)                                                        \
  if (!(r))                                                                              \
  GTEST_SKIP() << "cannot mount a small tmpfs to fill (`unshare -m` and `mount -t tmpfs` " \
                  "need root with CAP_SYS_ADMIN)"

// Room for the lock and nothing more: config.ini was committed with 0 bytes (its write
// was not checked, then renamed into place). Now: exit 2 naming the file, and neither
// config.ini nor its temporary file.
TEST(ReliabilityWrites, ConfigOnAFullDisk) {
  TempDir dir;
  const auto r = train_on_small_disk(dir, 64, 4, 2);
  SKIP_WITHOUT_SMALL_DISK(r);
  EXPECT_USER_ERROR(*r, cat("cannot write ", dir.file("disk/run/config.ini.tmp"),
                            ": No space left on device"));
  EXPECT_FALSE(fs::exists(dir.file("after/run/config.ini")));
  EXPECT_FALSE(fs::exists(dir.file("after/run/config.ini.tmp")));
}

// The log fills the disk: failed writes to train.log and metrics.jsonl were ignored while
// training went on (here 100,000 steps). Now the run ends at once, naming the file; the
// log holds only whole lines.
TEST(ReliabilityWrites, LogOnAFullDisk) {
  TempDir dir;
  const auto r = train_on_small_disk(dir, 64, 16, 100000, "--log-every 1");
  SKIP_WITHOUT_SMALL_DISK(r);
  EXPECT_USER_ERROR(*r, ": No space left on device");
  EXPECT_TRUE(std::regex_search(r->err, std::regex("cannot write \\S*/run/(train\\.log|metrics\\.jsonl):")))
      << r->err;
  const auto steps = logged_losses(dir.file("after/run/metrics.jsonl"));
  EXPECT_GT(steps.size(), 0u);
  EXPECT_LT(steps.size(), 1000u) << "training went on after the log could not be written";
  const std::string log = slurp(dir.file("after/run/train.log"));
  EXPECT_TRUE(log.empty() || log.back() == '\n') << "a line was left half-written";
  EXPECT_TRUE(latest_checkpoint(dir.file("after/run")).empty());
}

// A checkpoint that does not fit: the message was several lines of raw HDF5 text, and the
// unfinished .step-N.tmp kept its space. Now: one line with the file and the reason, no
// temporary directory, the earlier checkpoint intact, and the error in train.log too.
TEST(ReliabilityWrites, CheckpointOnAFullDisk) {
  TempDir dir;
  const auto r = train_on_small_disk(dir, 768, 768, 20, "--checkpoint-every 5");
  SKIP_WITHOUT_SMALL_DISK(r);
  EXPECT_USER_ERROR(*r, "par train: error: writing the checkpoint of step 10: cannot write ");
  const std::string error_line = r->err.substr(r->err.find("par train: error:"));
  EXPECT_EQ(std::count(error_line.begin(), error_line.end(), '\n'), 1) << error_line;
  EXPECT_NE(error_line.find("shard-00000.h5"), std::string::npos) << error_line;
  EXPECT_NE(error_line.find("No space left on device"), std::string::npos) << error_line;
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.file("after/run/checkpoints")))
    left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"step-00000005"});
  EXPECT_EQ(run_par(dir, cat("inspect ", quote(dir.file("after/run/checkpoints/step-00000005")))).rc, 0);
  const std::string log = slurp(dir.file("after/run/train.log"));
  EXPECT_NE(log.find(error_line), std::string::npos) << "train.log lacks the fatal error";
}

// A file-size limit (ulimit -f, as batch systems set): the first write past it killed
// par with SIGXFSZ, without a word, leaving a half-written checkpoint. Now it is the
// write's error, reported as a full disk's is.
TEST(ReliabilityWrites, CheckpointPastTheFileSizeLimit) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  // 100 KiB: the lock, logs and config fit; the tiny model's checkpoint shard (~420 KiB)
  // does not.
  const ParRun r = run_shell(dir, cat("ulimit -f 100; '", PAR_BINARY, "' ",
                                      tiny_train_args(data, dir.file("run"), 2)));
  EXPECT_USER_ERROR(r, "par train: error: writing the checkpoint of step 2: cannot write ");
  EXPECT_NE(r.err.find("File too large"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_empty(dir.file("run/checkpoints"))) << "a temporary checkpoint is left";
}

// `par export` and `par prep` onto a full disk: HDF5 failed to close the file, then crashed
// at the process's exit closing it again (exit 139). Now: exit 2 with one line naming the
// temporary file and the reason, and no file left.
TEST(ReliabilityWrites, ExportAndPrepOnAFullDisk) {
  // The run's one line: `error` (naming the file), then the disk's reason.
  const auto expect_one_line = [](const ParRun& r, const std::string& error) {
    EXPECT_USER_ERROR(r, error);
    EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  };
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 2)).rc, 0);
  const auto exported = on_small_disk(
      dir, 64, 16,
      cat("'", PAR_BINARY, "' export --checkpoint ", quote(dir.file("run")), " --out ",
          quote(dir.file("disk/model.h5"))));
  SKIP_WITHOUT_SMALL_DISK(exported);
  expect_one_line(*exported,
                  cat("par export: error: cannot write file ", dir.file("disk/model.h5.tmp")));
  EXPECT_FALSE(fs::exists(dir.file("after/model.h5.tmp")));
  EXPECT_FALSE(fs::exists(dir.file("after/model.h5")));

  TempDir dir2;
  const auto prepared = on_small_disk(
      dir2, 64, 16,
      cat("'", PAR_BINARY, "' prep copy --out ", quote(dir2.file("disk/data")),
          " --length 4097 --examples 200"));
  ASSERT_TRUE(prepared);
  expect_one_line(*prepared, cat("par prep copy: error: cannot write shard ",
                                 dir2.file("disk/data/train-00000.h5.tmp")));
  EXPECT_FALSE(fs::exists(dir2.file("after/data/train-00000.h5.tmp")));
}

// The file writes underneath: a failed write throws with the path and the reason, and
// leaves neither a partial file nor a partial line (a device that is always full stands
// in for the disk).
TEST(ReliabilityWrites, CheckedFileWrites) {
  TempDir dir;
  const std::string target = dir.file("config.ini");
  fs::create_symlink("/dev/full", target + ".tmp");
  try {
    write_file_atomically(target, "steps = 3\n");
    ADD_FAILURE() << "a write to a full device succeeded";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), cat("cannot write ", target, ".tmp: No space left on device"));
  }
  EXPECT_FALSE(fs::exists(target));
  EXPECT_TRUE(fs::exists("/dev/full"));
  AppendFile full("/dev/full");
  EXPECT_THROW(full.append("a line\n"), UserError);
  write_file_atomically(target, "steps = 3\n");
  EXPECT_EQ(slurp(target), "steps = 3\n");
  EXPECT_FALSE(fs::exists(target + ".tmp"));
}

}  // namespace
}  // namespace par
