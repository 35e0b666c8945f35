// CUDA graphs of a repeated step (cuda_ops.h: begin_graph, end_graph, replay_graph): a
// decoding-like step on fixed device buffers (a linear layer, squared ReLU, one query's
// attention over the keys through the split kernel, a residual add) recorded once gives the
// bits of the same step run directly; replayed after new inputs are uploaded into its
// buffers, the bits of a direct run on those inputs; recorded again with more keys under the
// same key, the kept instance is updated in place; a step that uploads cannot be replayed;
// anything that waits for the GPU inside a recording is a clear error; with graphs off the
// work runs as given. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace par {
namespace {

using cuda_test::bitwise_equal;
using cuda_test::DeviceArray;

constexpr int64_t kHeads = 4, kHeadDim = 32, kD = kHeads * kHeadDim, kMaxKeys = 1100;

struct Step {
  explicit Step(Ops<float>& ops)
      : ops(ops),
        x(ops, cuda_test::random_vector<float>(kD, 1)),
        w(ops, cuda_test::random_vector<float>(kD * kD, 2, 0.1)),
        bias(ops, cuda_test::random_vector<float>(kD, 3)),
        h(ops, kD),
        q(ops, kD),
        k(ops, cuda_test::random_vector<float>(kMaxKeys * kD, 4)),
        v(ops, cuda_test::random_vector<float>(kMaxKeys * kD, 5)),
        o(ops, kD),
        lse(ops, kHeads),
        q_pos(ops, std::vector<int64_t>{kMaxKeys}),
        k_pos(ops, positions()) {}
  static std::vector<int64_t> positions() {
    std::vector<int64_t> p;
    for (int64_t j = 0; j < kMaxKeys; ++j) p.push_back(j);
    return p;
  }
  // The step over the first `keys` keys; o is its output.
  void run(int64_t keys) {
    ops.linear_forward(h.get(), x.get(), w.get(), bias.get(), 1, kD, kD);
    ops.sqrelu_forward(q.get(), h.get(), kD);
    AttentionShape s{1, 1, keys, kHeads, kHeadDim, q_pos.get(), k_pos.get(), nullptr,
                     1.0 / std::sqrt(double(kHeadDim))};
    ops.attention_forward(s, q.get(), k.get(), v.get(), o.get(), lse.get());
    ops.add(o.get(), x.get(), kD);
  }
  Ops<float>& ops;
  DeviceArray<float> x, w, bias, h, q, k, v, o, lse;
  DeviceArray<int64_t> q_pos, k_pos;
};

class CudaGraphTest : public cuda_test::CudaTest {};

TEST_F(CudaGraphTest, RecordedOnceThenReplayedWithNewInputs) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kBF16);
  Step step(*ops);
  step.run(1000);  // unrecorded first: sizes the scratch buffers
  const std::vector<float> direct = step.o.host();
  step.o.set(std::vector<float>(kD, 0.0f));
  cuda::begin_graph(*ops);
  step.run(1000);
  cuda::end_graph(*ops, 7);
  EXPECT_TRUE(bitwise_equal(step.o.host(), direct)) << "the recorded step";
  const auto x2 = cuda_test::random_vector<float>(kD, 11);
  step.x.set(x2);
  step.run(1000);
  const std::vector<float> direct2 = step.o.host();
  ASSERT_FALSE(bitwise_equal(direct2, direct)) << "new inputs should change the output";
  step.o.set(std::vector<float>(kD, 0.0f));
  ASSERT_TRUE(cuda::replay_graph(*ops, 7));
  EXPECT_TRUE(bitwise_equal(step.o.host(), direct2)) << "the replayed step";
  EXPECT_FALSE(cuda::replay_graph(*ops, 8)) << "nothing is kept under key 8";
  const cuda::GraphStats st = cuda::graph_stats(*ops);
  EXPECT_EQ(st.instantiated, 1);
  EXPECT_EQ(st.launched, 2);
}

// One more key each step (as the cross cache grows): the same topology with new kernel
// parameters, so the kept instance is updated, not instantiated again.
TEST_F(CudaGraphTest, RecordedAgainWithMoreKeysUpdatesInPlace) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  Step step(*ops);
  for (int64_t keys = 1000; keys < 1004; ++keys) {
    step.run(keys);
    const std::vector<float> direct = step.o.host();
    step.o.set(std::vector<float>(kD, 0.0f));
    cuda::begin_graph(*ops);
    step.run(keys);
    cuda::end_graph(*ops, 1);
    EXPECT_TRUE(bitwise_equal(step.o.host(), direct)) << keys << " keys";
  }
  const cuda::GraphStats st = cuda::graph_stats(*ops);
  EXPECT_EQ(st.instantiated, 1);
  EXPECT_EQ(st.updated, 3) << "cudaGraphExecUpdate refused a change of kernel parameters";
}

TEST_F(CudaGraphTest, AStepThatUploadsRunsButIsNotReplayed) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  Step step(*ops);
  step.run(500);
  const auto x2 = cuda_test::random_vector<float>(kD, 12);
  step.x.set(x2);
  step.run(500);
  const std::vector<float> direct = step.o.host();
  step.x.set(cuda_test::random_vector<float>(kD, 1));
  cuda::begin_graph(*ops);
  step.x.set(x2);  // a staged upload, recorded
  step.run(500);
  cuda::end_graph(*ops, 3);
  EXPECT_TRUE(bitwise_equal(step.o.host(), direct));
  EXPECT_THROW(cuda::replay_graph(*ops, 3), std::runtime_error);
}

TEST_F(CudaGraphTest, WaitingInsideARecordingIsAnErrorAndDiscardsIt) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  Step step(*ops);
  step.run(200);
  const std::vector<float> direct = step.o.host();
  cuda::begin_graph(*ops);
  step.run(200);
  try {
    step.o.host();  // a download
    FAIL() << "a download inside a recording was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("download"), std::string::npos) << e.what();
  }
  // The stream works as before: the direct step gives its bits again.
  step.run(200);
  EXPECT_TRUE(bitwise_equal(step.o.host(), direct));
  EXPECT_EQ(cuda::graph_stats(*ops).instantiated, 0);
}

// A scratch buffer that grows frees its old memory, into which a kept graph may point: no
// graph is replayed until recorded again.
TEST_F(CudaGraphTest, AScratchBufferThatGrowsEndsTheReplays) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  Step step(*ops);
  const int64_t n = int64_t(1) << 22;
  DeviceArray<float> big(*ops, cuda_test::random_vector<float>(n, 9));
  ops->sum_squares(big.get(), 1000);  // its scratch buffer, small
  step.run(300);
  cuda::begin_graph(*ops);
  step.run(300);
  cuda::end_graph(*ops, 4);
  EXPECT_TRUE(ops->replay_capture(4));
  ops->sum_squares(big.get(), n);  // the buffer grows
  EXPECT_FALSE(ops->replay_capture(4)) << "a kept graph may point into freed memory";
  cuda::begin_graph(*ops);
  step.run(300);
  cuda::end_graph(*ops, 4);
  EXPECT_TRUE(ops->replay_capture(4)) << "recorded again";
  EXPECT_GE(cuda::graph_stats(*ops).updated, 1);
}

// So does freeing any buffer of the backend: the next allocation may hand its address out
// again for another use, and a kept graph pointing into it would not know.
TEST_F(CudaGraphTest, AFreedBufferEndsTheReplays) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  Step step(*ops);
  step.run(300);
  cuda::begin_graph(*ops);
  step.run(300);
  cuda::end_graph(*ops, 4);
  EXPECT_TRUE(ops->replay_capture(4));
  ops->deallocate(ops->allocate(1024));
  EXPECT_FALSE(ops->replay_capture(4)) << "a kept graph may point into freed memory";
  cuda::begin_graph(*ops);
  step.run(300);
  cuda::end_graph(*ops, 4);
  EXPECT_TRUE(ops->replay_capture(4)) << "recorded again";
}

// Recordings under one key whose kernels change every time cannot update the kept graph:
// after 32 instantiations recording is given up, and the work runs as given.
TEST_F(CudaGraphTest, RecordingsThatNeverUpdateAreGivenUp) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  DeviceArray<float> x(*ops, std::vector<float>(kD, 1.0f));
  for (int i = 0; i < 40; ++i) {
    cuda::begin_graph(*ops);
    if (i % 2 == 0) {
      ops->fill(x.get(), kD, float(i));
    } else {  // two nodes where the kept graph has one: it cannot be updated
      ops->scale(x.get(), kD, 2.0);
      ops->scale(x.get(), kD, 2.0);
    }
    cuda::end_graph(*ops, 9);
  }
  // fill(38), then scale by 4: 152 everywhere, whether recorded or not.
  EXPECT_TRUE(bitwise_equal(x.host(), std::vector<float>(kD, 152.0f)));
  const cuda::GraphStats st = cuda::graph_stats(*ops);
  EXPECT_EQ(st.instantiated, 32) << "recording went on after 32 instantiations";
  EXPECT_EQ(st.launched, 32);
}

// Replays pay for the recordings that could not update a kept graph: a decoder records
// anew at each refill and replays the steps between, and keeps its graphs however long it
// runs.
TEST_F(CudaGraphTest, RecordingsBetweenManyReplaysAreKept) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  DeviceArray<float> x(*ops, std::vector<float>(kD, 1.0f));
  for (int i = 0; i < 40; ++i) {
    cuda::begin_graph(*ops);
    ops->fill(x.get(), kD, 1.0f);
    if (i % 2 == 1) ops->scale(x.get(), kD, 2.0);  // a node more or less: no update
    cuda::end_graph(*ops, 9);
    for (int r = 0; r < 3; ++r) ASSERT_TRUE(cuda::replay_graph(*ops, 9)) << i;
  }
  EXPECT_TRUE(bitwise_equal(x.host(), std::vector<float>(kD, 2.0f)));
  const cuda::GraphStats st = cuda::graph_stats(*ops);
  EXPECT_EQ(st.instantiated, 40) << "recording was given up";
  EXPECT_EQ(st.launched, 160);
}

TEST_F(CudaGraphTest, GraphsOffRunTheWorkAsGiven) {
  auto ops = cuda::make_cuda_ops(0, cuda::MatmulPrecision::kFloat32);
  cuda::set_graphs(*ops, false);
  Step step(*ops);
  cuda::begin_graph(*ops);
  step.run(300);
  const std::vector<float> o = step.o.host();  // no recording: a download is fine
  cuda::end_graph(*ops, 5);
  step.run(300);
  EXPECT_TRUE(bitwise_equal(step.o.host(), o));
  EXPECT_FALSE(cuda::replay_graph(*ops, 5));
  EXPECT_EQ(cuda::graph_stats(*ops).instantiated, 0);
}

}  // namespace
}  // namespace par
