// The CPU kernels' scratch memory (kernels/cpu/workspace.h): it is held by the backend
// object and counted by it (CpuOps::scratch_bytes), and the memory plan
// (launch/memory_plan.cpp) predicts it from the kernels' own layout functions. After a
// training step's forward and backward, what the backend holds is the plan's "kernel
// scratch": exactly with one thread (every slot then reaches the size of its largest call),
// at most with several (not every thread takes every slot). And no CPU kernel keeps
// scratch of its own outside the Workspace, where neither would see it.
#include <gtest/gtest.h>
#include <omp.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "core/constants.h"
#include "core/error.h"
#include "core/model.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/linear_tall.h"
#include "launch/memory_plan.h"
#include "tests/test_util.h"

namespace par {
namespace {

// A model whose cross-attention key and value projections are tall (the row-chunked
// kernels' partial sums) and whose other layers are not (the paired backward's bias sums).
const ModelConfig kConfig{.vocab_size = 300, .d_model = 64, .context_length = 4096,
                          .num_latents = 64, .num_layers = 1, .cross_heads = 4,
                          .self_heads = 4, .mlp_factor = 2};

double planned_kernel_scratch(const ModelConfig& c, int64_t batch, int threads,
                              bool training = true) {
  PlanRequest r;
  r.model = c;
  r.micro_batch = batch;
  r.threads = threads;
  r.training = training;
  for (const MemoryItem& item : plan_memory(r).host)
    if (item.what == "kernel scratch") return item.bytes;
  ADD_FAILURE() << "the plan has no kernel scratch";
  return 0;
}

// The bytes CpuOps holds after one forward and backward of `batch` windows on `threads`
// (after an evaluation's forward alone where not `training`).
int64_t held_after_a_step(const ModelConfig& c, int64_t batch, int threads,
                          bool training = true) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  cpu::CpuOps<float> ops;
  int64_t before = -1;
  {
    PerceiverAR<float> model(c, ops, batch);
    before = ops.scratch_bytes();
    const auto noise = testing_util::random_vector<double>(batch * model.window_columns(), 7);
    std::vector<int32_t> windows(noise.size());
    for (size_t i = 0; i < noise.size(); ++i)
      windows[i] = 3 + int32_t(std::abs(noise[i]) * 1000) % int32_t(c.vocab_size - 3);
    // An evaluation's last block is padded: PAD keys leave the cross-attention's key blocks
    // ragged, as dropped ones do in training.
    if (!training)
      for (size_t i = windows.size() / 2; i < windows.size(); i += 3) windows[i] = kPadToken;
    ForwardContext ctx;
    ctx.training = training;
    if (training) {
      ctx.dropout = 0.1;
      ctx.cross_attend_dropout = 0.1;  // PAD-like dropped keys: non-contiguous key blocks
    }
    model.forward(windows.data(), batch, ctx);
    if (training) model.backward(1.0);
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(before, 0) << "scratch held before any kernel ran";
  return ops.scratch_bytes();
}

TEST(CpuWorkspace, OneThreadHoldsExactlyThePlannedScratch) {
  const ModelConfig& c = kConfig;
  ASSERT_TRUE(cpu::is_tall_linear(double(c.context_length), double(c.d_model),
                                  double(c.d_model)))
      << "the config no longer has a tall layer: the test would miss that slot";
  for (int64_t batch : {1, 2}) {
    SCOPED_TRACE(cat("batch ", batch));
    const int64_t held = held_after_a_step(c, batch, 1);
    EXPECT_GT(held, 0);
    EXPECT_EQ(double(held), planned_kernel_scratch(c, batch, 1));
  }
}

TEST(CpuWorkspace, SeveralThreadsHoldAtMostThePlannedScratch) {
  const ModelConfig& c = kConfig;
  for (int threads : {2, 3}) {
    SCOPED_TRACE(cat(threads, " threads"));
    const int64_t held = held_after_a_step(c, 1, threads);
    // More than one thread's worth: the others' buffers are in the count too.
    EXPECT_GT(held, held_after_a_step(c, 1, 1));
    EXPECT_LE(double(held), planned_kernel_scratch(c, 1, threads));
  }
}

// Eval's plan (forward passes only: launch/memory_plan.h, PlanRequest::training) bounds
// what its forwards hold, and leaves out the backward's partial sums.
TEST(CpuWorkspace, ForwardPassesHoldAtMostTheirPlannedScratch) {
  const ModelConfig& c = kConfig;
  for (int threads : {1, 2}) {
    SCOPED_TRACE(cat(threads, " threads"));
    const int64_t held = held_after_a_step(c, 2, threads, /*training=*/false);
    const double planned = planned_kernel_scratch(c, 2, threads, /*training=*/false);
    EXPECT_GT(held, 0);
    EXPECT_LE(double(held), planned);
    EXPECT_LT(planned, planned_kernel_scratch(c, 2, threads));
  }
}

// A buffer kept in thread-local or function-static storage would be scratch that neither
// the backend nor the plan counts.
TEST(CpuWorkspace, NoKernelKeepsScratchOfItsOwn) {
  namespace fs = std::filesystem;
  const std::regex own_storage(R"(\bthread_local\b|\bstatic\s+std::vector\b)");
  int files = 0;
  for (const auto& e : fs::directory_iterator(fs::path(PAR_SOURCE_DIR) / "kernels" / "cpu")) {
    const std::string ext = e.path().extension().string();
    if (ext != ".h" && ext != ".cpp") continue;
    ++files;
    std::ifstream in(e.path());
    std::string line;
    for (int n = 1; std::getline(in, line); ++n)
      if (std::regex_search(line, own_storage))
        ADD_FAILURE() << e.path().string() << ":" << n << ": " << line;
  }
  EXPECT_GT(files, 5) << "kernels/cpu not found under " << PAR_SOURCE_DIR;
}

}  // namespace
}  // namespace par
