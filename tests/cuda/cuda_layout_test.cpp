// Sequence- and tensor-parallel layouts on the GPU compute what one rank computes on the
// CPU: ranks are threads, each with its own CUDA backend, their device buffers exchanged
// through the host (staging_communicator.h). In bf16 the attention runs on cuDNN (heads of
// 16): each sequence rank attends over its slice of the context -- the ranks before the
// latents' over a prefix alone, the last over a prefix and the causal diagonal -- and the
// partial results and, in the backward, the merged statistics cross the ranks as on one
// rank's pieces. Layouts with 16 ranks split the 8 latents over two of them. Skips
// without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/model_case.h"
#include "tests/cuda/staging_communicator.h"
#include "tests/layout_run.h"

namespace par {
namespace {

using cuda::MatmulPrecision;

ModelConfig layout_config() {
  ModelConfig c{.vocab_size = 29, .d_model = 32, .context_length = 64, .num_latents = 8,
                .num_layers = 2, .cross_heads = 2, .self_heads = 2, .mlp_factor = 2};
  return c;
}

class CudaLayoutTest : public cuda_test::CudaPrecisionTest {};

TEST_P(CudaLayoutTest, MatchesOneRankOnTheCpu) {
  const MatmulPrecision precision = GetParam();
  const ModelConfig cfg = layout_config();
  const int64_t B = 2, W = cfg.context_length + 1;
  std::mt19937_64 rng(5);
  std::vector<int32_t> windows(size_t(B * W));
  for (auto& w : windows) w = int32_t(rng() % uint64_t(cfg.vocab_size));  // some PAD
  const auto params = cuda_test::parameters(ParamLayout(cfg), cfg.d_model);
  const ForwardContext ctx = cuda_test::training_context(4);

  cpu::CpuOps<float> cpu;
  PerceiverAR<float> ref(cfg, cpu, B);
  cpu.upload(ref.params(), params.data(), params.size() * sizeof(float));
  const LossSums want = ref.forward(windows.data(), B, ctx);
  ASSERT_GT(want.valid, 0);
  ref.zero_grads();
  ref.backward(1.0 / double(want.valid));
  std::vector<float> want_grads(params.size());
  cpu.download(want_grads.data(), ref.grads(), want_grads.size() * sizeof(float));

  const testing_util::RankBackend<float> gpu{
      [precision] { return cuda::make_cuda_ops(0, precision); },
      [](Communicator& host, Ops<float>& ops) -> std::unique_ptr<Communicator> {
        return std::make_unique<cuda_test::StagingCommunicator>(host, ops);
      }};
  const cuda_test::ModelTol tol = cuda_test::model_tol(precision);
  for (auto [sp, tp] : std::vector<std::pair<int, int>>{{2, 1}, {4, 1}, {2, 2}, {16, 1}}) {
    SCOPED_TRACE(cat("sp ", sp, " tp ", tp));
    const testing_util::LayoutResult<float> got =
        testing_util::run_layout(cfg, sp, tp, windows, B, ctx, params, want.valid, gpu);
    EXPECT_EQ(got.sums.valid, want.valid);
    EXPECT_NEAR(got.sums.objective, want.objective, tol.loss * std::abs(want.objective));
    EXPECT_TRUE(got.replicas_agree) << "replicated gradients differ between tensor ranks";
    const ParamLayout full(cfg);
    for (const ParamInfo& p : full.params()) {
      const std::vector<float> g(got.grads.begin() + p.offset,
                                 got.grads.begin() + p.offset + p.numel);
      const std::vector<float> e(want_grads.begin() + p.offset,
                                 want_grads.begin() + p.offset + p.numel);
      EXPECT_TRUE(cuda_test::close(g, e, tol.grads)) << p.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaLayoutTest, PAR_ALL_PRECISIONS);

}  // namespace
}  // namespace par
