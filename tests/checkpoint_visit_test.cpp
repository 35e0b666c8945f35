// Reading a checkpoint one tensor at a time (visit_model_file, what `par inspect` does):
// the same values as reading it whole, while the heap holds about one tensor more, not
// the three copies of the model's state a whole read takes.
#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/model_file.h"
#include "tests/par_cli.h"

namespace par {
namespace {

using namespace testing_util;

double heap_in_use() { return double(mallinfo2().uordblks); }

TEST(CheckpointVisit, HoldsOneTensorAtATime) {
  TempDir dir;
  const std::string data = copy_task_data(dir, 65, 30);
  // d 256, two layers: 1.6 M parameters, 6.3 MiB a state, the largest tensor 1 MiB.
  ASSERT_EQ(run_par(dir, tiny_train_args(data, dir.file("run"), 1) +
                             " --d-model 256 --num-layers 2 --batch-size 2").rc,
            0);
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

}  // namespace
}  // namespace par
