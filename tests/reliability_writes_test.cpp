// Writes under misuse: nothing is written inside a checkpoint, and every write of a run is
// checked: on a full disk the run ends with exit 2, the path and a one-line reason, leaves
// nothing half-made and removes its temporary files.
#include <gtest/gtest.h>

#include <filesystem>

#include "checkpoint/checkpoint_dir.h"
#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

const std::string kTiny = configs_dir() + "tiny.ini";

std::string train_args(const std::string& data, const std::string& out, int steps) {
  return cat("train --config ", quote(kTiny), " --data ", quote(data), " --out ", quote(out),
             " --steps ", steps, " --threads 1");
}

// `export --force` onto a checkpoint's own shard replaced it; any path inside a checkpoint
// is refused now, with or without --force, and so are prep's and train's --out there.
TEST(ReliabilityWrites, NothingIsWrittenInsideACheckpoint) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, train_args(data, dir.file("run"), 2)).rc, 0);
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
  EXPECT_USER_ERROR(run_par(dir, train_args(data, ckpt + "/run", 1)), "is inside the checkpoint");
  EXPECT_TRUE(tree(ckpt) == before) << "the checkpoint was modified";
  EXPECT_EQ(run_par(dir, cat("inspect ", quote(ckpt))).rc, 0);
}

}  // namespace
}  // namespace par
