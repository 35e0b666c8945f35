// Reading a checkpoint one tensor at a time (visit_model_file, what `par inspect` and
// `par export` do): the same values as reading it whole, while the process holds about one
// tensor more, not the model's state that a whole read takes.
#include <gtest/gtest.h>
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/model_file.h"
#include "tests/par_cli.h"

namespace par {
namespace {

using namespace testing_util;
namespace fs = std::filesystem;

double heap_in_use() { return double(mallinfo2().uordblks); }

// Trains one step of the tiny config made `extra` (wider) into dir/NAME.
void train_one_step(const TempDir& dir, const std::string& name, const std::string& extra) {
  const std::string data = dir.file("data/train-*.h5");
  if (!fs::exists(dir.file("data"))) copy_task_data(dir, 65, 30);
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file(name), 1) + extra).rc, 0);
}

TEST(CheckpointVisit, HoldsOneTensorAtATime) {
  TempDir dir;
  // d 256, two layers: 1.6 M parameters, 6.3 MiB a state, the largest tensor 1 MiB.
  train_one_step(dir, "run", " --d-model 256 --num-layers 2 --batch-size 2");
  const ModelFile whole = read_model_file(dir.file("run"), true);
  const ParamLayout layout(whole.model);
  size_t largest = 0;
  for (const ParamInfo& p : layout.params()) largest = std::max(largest, size_t(p.numel));
  const double state = 3.0 * double(whole.params.size()) * sizeof(float);
  ASSERT_GT(state, 12.0 * double(largest) * sizeof(float)) << "too few tensors to tell";

  const std::vector<float>* kinds[3] = {&whole.params, &whole.adam_m, &whole.adam_v};
  const double before = heap_in_use();
  double most = 0;
  int visited = 0;
  const ModelFile described =
      visit_model_file(dir.file("run"), true, [&](int kind, const ParamInfo& p, const float* v) {
        most = std::max(most, heap_in_use() - before);
        ++visited;
        EXPECT_TRUE(std::equal(v, v + p.numel, kinds[kind]->begin() + p.offset)) << p.name;
      });
  EXPECT_EQ(visited, 3 * int(layout.params().size()));
  EXPECT_TRUE(described.params.empty() && described.adam_m.empty());
  EXPECT_EQ(described.position.step, whole.position.step);
  // A tensor and the piece it is read from, and HDF5's caches: far below the state.
  EXPECT_LT(most, 4.0 * double(largest) * sizeof(float) + 4.0 * (1 << 20)) << "of " << state;
  RecordProperty("heap_while_visiting", cat(most));
}

// A field of /proc/self/status in bytes (VmRSS, VmHWM), -1 if absent.
double status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) * 1024;
  return -1;
}

// The growth of a process's peak resident memory while `work` runs, in bytes, measured in a
// child process after `warm`, from what it holds then (the peak is reset: a forked child
// inherits its parent's). `warm` does the same on a small model, so that the code `work`
// runs is paged in (a child faults in the libraries' pages anew) without raising the peak.
// Large blocks are mapped and unmapped on their own there, so that memory freed is memory
// given back: glibc would otherwise keep freed blocks of a size it has seen in its heap.
double peak_growth_of(const std::function<void()>& warm, const std::function<void()>& work) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);
    warm();
    // The heap's free memory, such as earlier tests of this process left, given back now:
    // trimmed during `work`, it would lower the resident size below the peak being reset,
    // and hide the growth (a whole read measured 0 after the other tests in one process).
    malloc_trim(0);
    double grown = -1;
    if (std::ofstream("/proc/self/clear_refs") << "5" << std::flush) {  // resets VmHWM
      const double before = status_bytes("VmRSS");
      work();
      grown = status_bytes("VmHWM") - before;
    }
    (void)!write(fds[1], &grown, sizeof grown);
    _exit(0);
  }
  close(fds[1]);
  double grown = -1;
  if (read(fds[0], &grown, sizeof grown) != sizeof grown) grown = -1;
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return grown;
}

// `par export` writes tensor by tensor as it reads them: its memory grows by about a
// tensor (and HDF5's copy of a chunk, which its checksum is computed on), where reading the
// checkpoint whole grows by its parameters. (d 384, four layers: 6.5 MB against 28.8 MB.)
TEST(CheckpointVisit, ExportHoldsOneTensorAtATime) {
  TempDir dir;
  train_one_step(dir, "run", " --d-model 384 --num-layers 4 --batch-size 2");
  train_one_step(dir, "small", "");
  const ModelConfig model = read_model_config(dir.file("run"));
  const double params = double(ParamLayout(model).total()) * sizeof(float);
  auto warm = [&] {
    export_model_file(dir.file("small"), dir.file("small.h5"));
    read_model_file(dir.file("small"), false);
  };
  const double whole = peak_growth_of(warm, [&] { read_model_file(dir.file("run"), false); });
  const double exporting =
      peak_growth_of(warm, [&] { export_model_file(dir.file("run"), dir.file("model.h5")); });
  if (whole < 0 || exporting < 0) GTEST_SKIP() << "cannot reset the peak resident memory here";
  EXPECT_GE(whole, 0.9 * params) << "the measure does not see a whole read";
  EXPECT_LT(exporting, 0.4 * params) << "of " << params << " bytes of parameters";
  RecordProperty("whole_read_peak_growth", cat(whole));
  RecordProperty("export_peak_growth", cat(exporting));
  // What it wrote is the checkpoint's parameters.
  const ModelFile exported = read_model_file(dir.file("model.h5"), false);
  EXPECT_TRUE(exported.params == read_model_file(dir.file("run"), false).params);
}

}  // namespace
}  // namespace par
