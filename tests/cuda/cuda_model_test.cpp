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

namespace par {
namespace {

using cuda::MatmulPrecision;
using cuda_test::bitwise_equal;
using cuda_test::close;

// Head sizes 16 (cross) and 12 (self), nothing a multiple of 32.
ModelConfig odd_config() {
  ModelConfig c;
  c.vocab_size = 37;
  c.d_model = 48;
  c.context_length = 70;
  c.num_latents = 17;
  c.num_layers = 2;
  c.cross_heads = 3;
  c.self_heads = 4;
  c.mlp_factor = 3;
  return c;
}

constexpr int64_t kBatch = 3;

std::vector<int32_t> windows(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(1, int32_t(c.vocab_size - 1));
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int32_t> w(size_t(kBatch * (c.context_length + 1)));
  for (auto& t : w) t = u(rng) < 0.1 ? 0 : tok(rng);
  return w;
}

// The spec's initialization, with a random head and random norm parameters and biases, so
// that every gradient is non-trivial.
std::vector<float> parameters(const ParamLayout& layout, int64_t d) {
  std::vector<float> p;
  init_parameters(layout, 5, p);
  std::mt19937_64 rng(6);
  std::normal_distribution<double> n(0, 1);
  for (const ParamInfo& info : layout.params()) {
    float* x = p.data() + info.offset;
    for (int64_t i = 0; i < info.numel; ++i) {
      if (info.kind == ParamKind::kBias || info.kind == ParamKind::kNormBias)
        x[i] = float(0.1 * n(rng));
      else if (info.kind == ParamKind::kNormWeight)
        x[i] = float(1.0 + 0.1 * n(rng));
      else if (info.name == "head.weight")
        x[i] = float(n(rng) / std::sqrt(double(d)));
    }
  }
  return p;
}

ForwardContext training_context(uint32_t step) {
  ForwardContext ctx;
  ctx.training = true;
  ctx.dropout = 0.2;
  ctx.cross_attend_dropout = 0.25;
  ctx.seed = 42;
  ctx.step = step;
  ctx.example_base = 4;
  return ctx;
}

struct Result {
  LossSums loss;
  std::vector<float> logits, grads;
};

Result forward_backward(Ops<float>& ops, const ModelConfig& cfg, const std::vector<float>& params,
                        const std::vector<int32_t>& w) {
  PerceiverAR<float> model(cfg, ops, kBatch);
  ops.upload(model.params(), params.data(), params.size() * sizeof(float));
  Result r;
  r.loss = model.forward(w.data(), kBatch, training_context(3));
  r.logits = model.logits();
  model.zero_grads();
  model.backward(1.0 / double(r.loss.valid));
  r.grads.resize(params.size());
  ops.download(r.grads.data(), model.grads(), r.grads.size() * sizeof(float));
  return r;
}

// Tolerances for a whole forward and backward pass, relative to each tensor's largest
// entry: errors of the single products (cuda_test_util.h) compound over about a dozen
// products and LayerNorms in a row.
struct ModelTol {
  double loss, logits, grads, train_loss, train_params;
};
ModelTol model_tol(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::kFloat32: return {1e-5, 1e-4, 2e-4, 1e-4, 1e-2};
    case MatmulPrecision::kTF32: return {3e-3, 2e-2, 3e-2, 5e-3, 1e-1};
    case MatmulPrecision::kBF16: return {3e-2, 8e-2, 1e-1, 5e-2, 3e-1};
  }
  return {};
}

class CudaModelTest : public cuda_test::CudaPrecisionTest {};

TEST_P(CudaModelTest, LossAndEveryGradientMatchTheCpu) {
  const ModelConfig cfg = odd_config();
  const ParamLayout layout(cfg);
  const auto params = parameters(layout, cfg.d_model);
  const auto w = windows(cfg, 7);
  cpu::CpuOps<float> cpu;
  auto gpu = make_ops();
  const Result want = forward_backward(cpu, cfg, params, w);
  const Result got = forward_backward(*gpu, cfg, params, w);
  const ModelTol tol = model_tol(GetParam());

  ASSERT_EQ(got.loss.valid, want.loss.valid);
  ASSERT_GT(want.loss.valid, 0);
  EXPECT_NEAR(got.loss.ce, want.loss.ce, tol.loss * std::abs(want.loss.ce));
  EXPECT_NEAR(got.loss.objective, want.loss.objective, tol.loss * std::abs(want.loss.objective));
  EXPECT_TRUE(close(got.logits, want.logits, tol.logits)) << "logits";
  for (const ParamInfo& p : layout.params()) {
    const std::vector<float> g(got.grads.begin() + p.offset, got.grads.begin() + p.offset + p.numel);
    const std::vector<float> e(want.grads.begin() + p.offset, want.grads.begin() + p.offset + p.numel);
    EXPECT_TRUE(close(g, e, tol.grads)) << p.name;
  }
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
  const Result a = forward_backward(*gpu, cfg, params, w);
  const Result b = forward_backward(*gpu, cfg, params, w);
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

}  // namespace
}  // namespace par
