// The whole model on the CUDA backend against the CPU backend: the loss, the logits and
// every parameter's gradient of a small model with odd sizes, PAD tokens and both kinds of
// dropout on (so the two backends must draw the same masks); a few Adam steps on one
// batch; and bit-identical results from run to run (what exact resume needs). Once per
// matrix-product precision. Each test skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/init.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/model_case.h"

namespace par {
namespace {

using cuda::MatmulPrecision;
using cuda_test::bitwise_equal;
using cuda_test::close;

using cuda_test::kBatch;
using cuda_test::bf16_storage_tol;
using cuda_test::model_tol;
using cuda_test::ModelTol;
using cuda_test::odd_config;
using cuda_test::parameters;
using cuda_test::Result;
using cuda_test::training_context;
using cuda_test::windows;

class CudaModelTest : public cuda_test::CudaPrecisionTest {};

// One forward and backward pass against the CPU's: the objective, the logits and every
// parameter's gradient, within the precision's tolerances.
void expect_pass_matches(const Result& got, const Result& want, const ParamLayout& layout,
                         const ModelTol& tol) {
  EXPECT_NEAR(got.loss.objective, want.loss.objective, tol.loss * std::abs(want.loss.objective));
  EXPECT_TRUE(close(got.logits, want.logits, tol.logits)) << "logits";
  for (const ParamInfo& p : layout.params()) {
    const std::vector<float> g(got.grads.begin() + p.offset, got.grads.begin() + p.offset + p.numel);
    const std::vector<float> e(want.grads.begin() + p.offset, want.grads.begin() + p.offset + p.numel);
    EXPECT_TRUE(close(g, e, tol.grads)) << p.name;
  }
}

void check_pass_against_cpu(const ModelConfig& cfg, Ops<float>& gpu, MatmulPrecision precision) {
  const ParamLayout layout(cfg);
  const auto params = parameters(layout, cfg.d_model);
  const auto w = windows(cfg, 7);
  cpu::CpuOps<float> cpu;
  const Result want = cuda_test::forward_backward(cpu, cfg, params, w);
  const Result got = cuda_test::forward_backward(gpu, cfg, params, w);
  const ModelTol tol = model_tol(precision);

  ASSERT_EQ(got.loss.valid, want.loss.valid);
  ASSERT_GT(want.loss.valid, 0);
  EXPECT_NEAR(got.loss.ce, want.loss.ce, tol.loss * std::abs(want.loss.ce));
  expect_pass_matches(got, want, layout, tol);
}

TEST_P(CudaModelTest, LossAndEveryGradientMatchTheCpu) {
  auto gpu = make_ops();
  check_pass_against_cpu(odd_config(), *gpu, GetParam());
}

// Absolute positions (spec/MODEL.md section 13) take no kernel of their own: the sinusoids
// are added by an embedding lookup of their table, indexed by document position (EOS
// tokens in the windows restart the count). Both encodings at once, against the CPU.
TEST_P(CudaModelTest, AbsolutePositionsMatchTheCpu) {
  ModelConfig cfg = odd_config();
  cfg.position_encoding = PositionEncoding::kBoth;
  auto gpu = make_ops();
  check_pass_against_cpu(cfg, *gpu, GetParam());
}

// The same with the fused attention kernels requested: the cross-attention (heads of 16)
// takes them in tf32 and bf16, the latent self-attention (heads of 12) falls back.
TEST_P(CudaModelTest, WithFusedAttentionMatchesTheCpu) {
  const ModelConfig cfg = odd_config();
  const ParamLayout layout(cfg);
  const auto params = parameters(layout, cfg.d_model);
  const auto w = windows(cfg, 10);
  cpu::CpuOps<float> cpu;
  auto gpu = make_ops();
  cuda::set_attention_kernel(*gpu, cuda::AttentionKernel::kFused);
  const Result want = cuda_test::forward_backward(cpu, cfg, params, w);
  const Result got = cuda_test::forward_backward(*gpu, cfg, params, w);
  const ModelTol tol = model_tol(GetParam());
  expect_pass_matches(got, want, layout, tol);
}

// The input side's keys and values stored in bfloat16 (KeyValueStorage::kBf16), against
// the CPU's same storage: both round the same keys and values but for the few that the
// backends' float errors move across a midpoint, well inside the model tolerances.
TEST_P(CudaModelTest, Bf16KeysAndValuesMatchTheCpu) {
  ModelConfig cfg = odd_config();
  cfg.position_encoding = PositionEncoding::kBoth;
  const ParamLayout layout(cfg);
  const auto params = parameters(layout, cfg.d_model);
  const auto w = windows(cfg, 12);
  cpu::CpuOps<float> cpu;
  auto gpu = make_ops();
  const Result want = cuda_test::forward_backward(cpu, cfg, params, w, KeyValueStorage::kBf16);
  const Result got = cuda_test::forward_backward(*gpu, cfg, params, w, KeyValueStorage::kBf16);
  ASSERT_EQ(got.loss.valid, want.loss.valid);
  expect_pass_matches(got, want, layout, bf16_storage_tol(GetParam()));
  const Result again = cuda_test::forward_backward(*gpu, cfg, params, w, KeyValueStorage::kBf16);
  EXPECT_TRUE(bitwise_equal(got.grads, again.grads)) << "gradients, second pass";
}

// The same with every key visible (no PAD, no key dropout), which the model says
// (AttentionShape::keeps_every_key): in bf16, cuDNN reads the keys and values where they lie
// and writes their gradients there.
TEST_P(CudaModelTest, Bf16KeysAndValuesReadInPlaceMatchTheCpu) {
  const ModelConfig cfg = odd_config();
  const ParamLayout layout(cfg);
  const auto params = parameters(layout, cfg.d_model);
  std::vector<int32_t> w = windows(cfg, 13);
  for (int32_t& t : w)
    if (t == kPadToken) t = 5;
  ForwardContext ctx = cuda_test::training_context(3);
  ctx.cross_attend_dropout = 0;
  cpu::CpuOps<float> cpu;
  auto gpu = make_ops();
  const Result want = cuda_test::forward_backward(cpu, cfg, params, w, KeyValueStorage::kBf16, ctx);
  const Result got = cuda_test::forward_backward(*gpu, cfg, params, w, KeyValueStorage::kBf16, ctx);
  ASSERT_EQ(got.loss.valid, want.loss.valid);
  expect_pass_matches(got, want, layout, bf16_storage_tol(GetParam()));
}

// Adam on one batch: the losses of both backends follow each other and fall, and the
// parameters end up close. Adam turns tiny gradient differences of near-zero gradients
// into whole steps of either sign, so the parameters are compared by the mean difference
// relative to the mean update, and by the largest difference against the step size.
TEST_P(CudaModelTest, AdamStepsFollowTheCpu) {
  const ModelConfig cfg = odd_config();
  const ParamLayout layout(cfg);
  const auto p0 = parameters(layout, cfg.d_model);
  const auto w = windows(cfg, 8);
  OptimizerConfig oc;
  oc.lr = 3e-3;
  oc.clip_norm = 1.0;
  const int steps = 4;
  auto train = [&](Ops<float>& ops, std::vector<double>& losses) {
    PerceiverAR<float> model(cfg, ops, kBatch);
    Adam<float> adam(oc, model.layout(), ops);
    ops.upload(model.params(), p0.data(), p0.size() * sizeof(float));
    for (int s = 0; s < steps; ++s) {
      const LossSums l = model.forward(w.data(), kBatch, training_context(uint32_t(s)));
      losses.push_back(l.objective / double(l.valid));
      model.zero_grads();
      model.backward(1.0 / double(l.valid));
      adam.step(model.params(), model.grads(), s);
    }
    std::vector<float> p(p0.size());
    ops.download(p.data(), model.params(), p.size() * sizeof(float));
    return p;
  };
  cpu::CpuOps<float> cpu;
  auto gpu = make_ops();
  std::vector<double> loss_cpu, loss_gpu;
  const auto p_cpu = train(cpu, loss_cpu);
  const auto p_gpu = train(*gpu, loss_gpu);
  const ModelTol tol = model_tol(GetParam());
  for (int s = 0; s < steps; ++s)
    EXPECT_NEAR(loss_gpu[size_t(s)], loss_cpu[size_t(s)], tol.train_loss * loss_cpu[size_t(s)])
        << "step " << s;
  EXPECT_LT(loss_gpu.back(), loss_gpu.front());
  double diff = 0, update = 0, worst = 0;
  for (size_t i = 0; i < p0.size(); ++i) {
    diff += std::abs(double(p_gpu[i]) - p_cpu[i]);
    update += std::abs(double(p_cpu[i]) - p0[i]);
    worst = std::max(worst, std::abs(double(p_gpu[i]) - p_cpu[i]));
  }
  ASSERT_GT(update, 0);
  EXPECT_LE(diff / update, tol.train_params) << "mean |p_gpu - p_cpu| / mean |p_cpu - p0|";
  EXPECT_LE(worst, 2.5 * oc.lr * steps) << "largest parameter difference";
}

// Same inputs, same bits: gradients of two passes, and parameters after Adam steps in two
// separate models.
TEST_P(CudaModelTest, IsBitwiseReproducible) {
  const ModelConfig cfg = odd_config();
  const ParamLayout layout(cfg);
  const auto params = parameters(layout, cfg.d_model);
  const auto w = windows(cfg, 9);
  auto gpu = make_ops();
  const Result a = cuda_test::forward_backward(*gpu, cfg, params, w);
  const Result b = cuda_test::forward_backward(*gpu, cfg, params, w);
  EXPECT_EQ(a.loss.objective, b.loss.objective);
  EXPECT_TRUE(bitwise_equal(a.logits, b.logits)) << "logits";
  EXPECT_TRUE(bitwise_equal(a.grads, b.grads)) << "gradients";

  OptimizerConfig oc;
  oc.lr = 1e-3;
  auto train = [&] {
    PerceiverAR<float> model(cfg, *gpu, kBatch);
    Adam<float> adam(oc, model.layout(), *gpu);
    gpu->upload(model.params(), params.data(), params.size() * sizeof(float));
    for (int s = 0; s < 3; ++s) {
      const LossSums l = model.forward(w.data(), kBatch, training_context(uint32_t(s)));
      model.zero_grads();
      model.backward(1.0 / double(l.valid));
      adam.step(model.params(), model.grads(), s);
    }
    std::vector<float> p(params.size());
    gpu->download(p.data(), model.params(), p.size() * sizeof(float));
    return p;
  };
  EXPECT_TRUE(bitwise_equal(train(), train())) << "parameters after 3 Adam steps";
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaModelTest, PAR_ALL_PRECISIONS);

// bf16 with every attention on cuDNN (kCudnn: an error rather than a fallback): heads of
// 16 (cross) and 8 (self), which cuDNN takes. Its outputs are rounded to bf16 (2^-9
// relative) where the blocked path keeps float32, well inside the bf16 model tolerances.
// Reproducible bit for bit (the deterministic backward).
TEST(CudaModelCudnn, LossAndEveryGradientMatchTheCpu) {
  PAR_SKIP_WITHOUT_GPU();
  ModelConfig cfg = odd_config();
  cfg.self_heads = 6;
  const ParamLayout layout(cfg);
  const auto params = parameters(layout, cfg.d_model);
  const auto w = windows(cfg, 11);
  cpu::CpuOps<float> cpu;
  auto gpu = cuda::make_cuda_ops(0, MatmulPrecision::kBF16);
  cuda::set_attention_kernel(*gpu, cuda::AttentionKernel::kCudnn);
  const Result want = cuda_test::forward_backward(cpu, cfg, params, w);
  const Result got = cuda_test::forward_backward(*gpu, cfg, params, w);
  expect_pass_matches(got, want, layout, model_tol(MatmulPrecision::kBF16));
  const Result again = cuda_test::forward_backward(*gpu, cfg, params, w);
  EXPECT_TRUE(bitwise_equal(got.grads, again.grads)) << "gradients, second pass";
}

}  // namespace
}  // namespace par
