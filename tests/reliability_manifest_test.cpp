// Checkpoint directories under misuse and accidents: pruning killed half-way, manifests
// edited by hand, directories renamed or damaged, strays in checkpoints/.
#include <gtest/gtest.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "checkpoint/checkpoint_dir.h"
#include "tests/par_cli.h"

namespace par {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Pruning removes a checkpoint's COMPLETE before any other of its files (watched with
// inotify), so a kill -9 at any moment of it leaves nothing that looks like a checkpoint
// and lacks a file; the next prune removes such remains.
TEST(ReliabilityManifest, PruningRemovesCompleteFirst) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  const std::string run = dir.file("run");
  ASSERT_EQ(run_par(dir, tiny_train_args(data, run, 4) + " --checkpoint-every 1 --keep-checkpoints 10").rc, 0);
  // What a prune killed half-way leaves: a step directory without COMPLETE.
  fs::remove(checkpoint_dir(run, 1) + "/COMPLETE");
  const int fd = inotify_init1(IN_NONBLOCK);
  ASSERT_GE(fd, 0);
  std::map<int, std::string> watched;
  for (int step : {2, 3, 4})
    watched[inotify_add_watch(fd, checkpoint_dir(run, step).c_str(), IN_DELETE)] = checkpoint_dir(run, step);
  const ParRun r = run_par(dir, tiny_train_args(data, run, 5) + " --checkpoint-every 1 --resume auto --keep-checkpoints 1");
  ASSERT_EQ(r.rc, 0) << r.err;
  std::map<std::string, std::vector<std::string>> deleted;  // directory -> files, in order
  alignas(inotify_event) char buf[1 << 16];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;)
    for (char* p = buf; p < buf + n;) {
      const auto* e = reinterpret_cast<const inotify_event*>(p);
      if ((e->mask & IN_DELETE) && e->len > 0) deleted[watched[e->wd]].push_back(e->name);
      p += sizeof(inotify_event) + e->len;
    }
  close(fd);
  for (const auto& [wd, ckpt] : watched) {
    SCOPED_TRACE(ckpt);
    ASSERT_FALSE(deleted[ckpt].empty()) << "not pruned";
    EXPECT_EQ(deleted[ckpt].front(), "COMPLETE") << "deleted first: " << deleted[ckpt].front();
  }
  EXPECT_EQ(names_in(run + "/checkpoints"), std::vector<std::string>{"step-00000005"});
}

}  // namespace
}  // namespace par
