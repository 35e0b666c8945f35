// Whole-model properties: the gradient of the training objective (with both kinds of
// dropout on) against finite differences, the first loss of a fresh model, causality of
// the latents, and a training step at a 131072-token context.
#include <gtest/gtest.h>

#include <cmath>

#include "core/init.h"
#include "core/model.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"

namespace par {
namespace {

using testing_util::expect_gradient;
using testing_util::random_vector;

ModelConfig tiny_config() {
  ModelConfig c{.vocab_size = 11, .d_model = 8, .context_length = 12, .num_latents = 5,
                .num_layers = 2, .cross_heads = 2, .self_heads = 2, .mlp_factor = 2};
  return c;
}

std::vector<int32_t> random_windows(const ModelConfig& c, int64_t batch, uint64_t seed,
                                    double pad_fraction) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(1, int32_t(c.vocab_size - 1));
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int32_t> w(size_t(batch * (c.context_length + 1)));
  for (auto& t : w) t = u(rng) < pad_fraction ? 0 : tok(rng);
  return w;
}

// Random parameters everywhere (the head too), so that no gradient is trivially zero.
template <typename T>
std::vector<T> random_params(const ParamLayout& layout, uint64_t seed) {
  auto v = random_vector<T>(layout.total(), seed, 0.5);
  for (const ParamInfo& p : layout.params())
    if (p.kind == ParamKind::kNormWeight)
      for (int64_t i = 0; i < p.numel; ++i) v[size_t(p.offset + i)] += T(1);
  return v;
}

// With absolute positions the windows (random tokens, EOS among them) continue documents
// begun before them (carries 3 and 0).
void check_gradient(PositionEncoding pe) {
  ModelConfig cfg = tiny_config();
  cfg.position_encoding = pe;
  cpu::CpuOps<double> ops;
  const int64_t B = 2;
  PerceiverAR<double> model(cfg, ops, B);
  std::vector<double> params = random_params<double>(model.layout(), 7);
  const auto windows = random_windows(cfg, B, 8, 0.1);
  const int64_t carry[2] = {3, 0};
  ForwardContext ctx;
  ctx.position_carry = carry;
  ctx.training = true;
  ctx.dropout = 0.2;
  ctx.cross_attend_dropout = 0.25;
  ctx.seed = 42;
  ctx.step = 3;
  ctx.example_base = 4;
  // The masks are pure functions of (seed, step, example, site, element), so the
  // objective is a deterministic, piecewise-smooth function of the parameters.
  int64_t valid = 0;
  auto objective = [&] {
    ops.upload(model.params(), params.data(), params.size() * sizeof(double));
    const LossSums s = model.forward(windows.data(), B, ctx);
    valid = s.valid;
    return s.objective / double(s.valid);
  };
  objective();
  ASSERT_GT(valid, 0);
  model.zero_grads();
  model.backward(1.0 / double(valid));
  std::vector<double> grads(params.size());
  ops.download(grads.data(), model.grads(), grads.size() * sizeof(double));
  for (const ParamInfo& p : model.layout().params()) {
    std::vector<double> x(params.begin() + p.offset, params.begin() + p.offset + p.numel);
    std::vector<double> g(grads.begin() + p.offset, grads.begin() + p.offset + p.numel);
    auto f = [&] {
      std::copy(x.begin(), x.end(), params.begin() + p.offset);
      return objective();
    };
    // The absolute floor: a central difference of an objective of a few units carries
    // ~1e-9 of rounding, seen where the analytic gradient is exactly 0 (key biases of
    // unrotated dimensions, which the softmax ignores).
    expect_gradient(p.name, x, g, f, 1e-6, 3e-9, 1e-6, 24);
    std::copy(x.begin(), x.end(), params.begin() + p.offset);
  }
}

TEST(Model, GradientMatchesFiniteDifferencesWithDropout) { check_gradient(PositionEncoding::kRotary); }
TEST(Model, GradientWithAbsolutePositions) { check_gradient(PositionEncoding::kAbsolute); }
TEST(Model, GradientWithBothPositionEncodings) { check_gradient(PositionEncoding::kBoth); }

TEST(Model, FirstLossIsLogVocab) {
  ModelConfig cfg = tiny_config();
  cfg.vocab_size = 259;
  cpu::CpuOps<float> ops;
  PerceiverAR<float> model(cfg, ops, 3);
  std::vector<float> params;
  init_parameters(model.layout(), 1, params);
  ops.upload(model.params(), params.data(), params.size() * sizeof(float));
  const auto windows = random_windows(cfg, 3, 9, 0.0);
  const LossSums s = model.forward(windows.data(), 3, ForwardContext{});
  ASSERT_EQ(s.valid, 3 * cfg.num_latents);
  const double ln_v = std::log(259.0);
  EXPECT_NEAR(s.ce / double(s.valid), ln_v, 1e-6);
  EXPECT_NEAR(s.objective / double(s.valid), ln_v + 1e-4 * ln_v * ln_v, 1e-6);
}

TEST(Model, InitializationFollowsTheSpec) {
  ModelConfig cfg = tiny_config();
  cfg.d_model = 64;
  cfg.vocab_size = 300;
  ParamLayout layout(cfg);
  std::vector<double> p;
  init_parameters(layout, 5, p);
  auto stats = [&](const std::string& name, double& mean, double& sd, double& maxabs) {
    const ParamInfo* info = layout.find(name);
    double s = 0, ss = 0;
    maxabs = 0;
    for (int64_t i = 0; i < info->numel; ++i) {
      const double x = p[size_t(info->offset + i)];
      s += x;
      ss += x * x;
      maxabs = std::max(maxabs, std::abs(x));
    }
    mean = s / double(info->numel);
    sd = std::sqrt(ss / double(info->numel) - mean * mean);
  };
  double mean, sd, mx;
  stats("embed.weight", mean, sd, mx);  // truncated N(0, 1): sd 0.8796, |x| <= 2
  EXPECT_NEAR(sd, 0.8796, 0.02);
  EXPECT_LE(mx, 2.0);
  stats("layers.0.mlp.fc2.weight", mean, sd, mx);  // fan_in 128: sd 1/sqrt(128)
  EXPECT_NEAR(sd, 1.0 / std::sqrt(128.0), 0.004);
  EXPECT_LE(mx, 2.0 / std::sqrt(128.0) / 0.87962566103423978 + 1e-12);
  for (const char* zero : {"head.weight", "head.bias", "cross.attn.q.bias", "final_ln.bias"}) {
    stats(zero, mean, sd, mx);
    EXPECT_EQ(mx, 0.0) << zero;
  }
  stats("cross.ln_kv.weight", mean, sd, mx);
  EXPECT_EQ(mean, 1.0);
  EXPECT_EQ(sd, 0.0);
  // Different seeds, different weights; same seed, same weights.
  std::vector<double> p2, p3;
  init_parameters(layout, 6, p2);
  init_parameters(layout, 5, p3);
  EXPECT_NE(p, p2);
  EXPECT_EQ(p, p3);
}

TEST(Model, LatentsDoNotSeeLaterInputs) {
  ModelConfig cfg = tiny_config();
  cfg.context_length = 16;
  cfg.num_latents = 8;
  cpu::CpuOps<float> ops;
  PerceiverAR<float> model(cfg, ops, 1);
  auto params = random_params<float>(model.layout(), 11);
  ops.upload(model.params(), params.data(), params.size() * sizeof(float));
  auto windows = random_windows(cfg, 1, 12, 0.0);
  model.forward(windows.data(), 1, ForwardContext{});
  const auto before = model.logits();
  const int64_t V = cfg.vocab_size, M = cfg.num_latents, N = cfg.context_length;
  for (int64_t j = N - M; j < N; ++j) {  // change the input under latent j - (N - M)
    auto changed = windows;
    changed[size_t(j)] = changed[size_t(j)] % int32_t(V - 1) + 1;
    model.forward(changed.data(), 1, ForwardContext{});
    const auto after = model.logits();
    int64_t later_changed = 0;
    for (int64_t i = 0; i < M; ++i) {
      const int64_t s_i = N - M + i;
      for (int64_t v = 0; v < V; ++v) {
        const float a = before[size_t(i * V + v)], b = after[size_t(i * V + v)];
        if (s_i < j) ASSERT_EQ(a, b) << "latent " << i << " changed when input " << j << " did";
        else if (a != b) ++later_changed;
      }
    }
    EXPECT_GT(later_changed, 0) << "input " << j << " reached no latent at or after it";
  }
}

// A narrow model at the cpu-131k context length: forward, backward and the loss are
// finite, and a gradient step lowers the loss on the same batch.
TEST(Model, TrainsAt131kContext) {
  ModelConfig cfg{.vocab_size = 259, .d_model = 32, .context_length = 131072, .num_latents = 64,
                  .num_layers = 1, .cross_heads = 4, .self_heads = 4, .mlp_factor = 2};
  cpu::CpuOps<float> ops;
  PerceiverAR<float> model(cfg, ops, 1);
  std::vector<float> params;
  init_parameters(model.layout(), 3, params);
  ops.upload(model.params(), params.data(), params.size() * sizeof(float));
  const auto windows = random_windows(cfg, 1, 13, 0.01);
  ForwardContext ctx;
  ctx.training = true;
  ctx.dropout = 0.1;
  ctx.cross_attend_dropout = 0.2;
  double first = 0, last = 0;
  for (int step = 0; step < 3; ++step) {
    ctx.step = uint32_t(step);
    const LossSums s = model.forward(windows.data(), 1, ctx);
    ASSERT_TRUE(std::isfinite(s.objective));
    (step == 0 ? first : last) = s.objective / double(s.valid);
    model.zero_grads();
    model.backward(1.0 / double(s.valid));
    const double norm = std::sqrt(ops.sum_squares(model.grads(), model.layout().total()));
    ASSERT_TRUE(std::isfinite(norm) && norm > 0);
    // Plain gradient descent on the same batch.
    std::vector<float> g(params.size());
    ops.download(g.data(), model.grads(), g.size() * sizeof(float));
    for (size_t i = 0; i < params.size(); ++i) params[i] -= 0.5f * g[i] / float(norm);
    ops.upload(model.params(), params.data(), params.size() * sizeof(float));
  }
  EXPECT_LT(last, first);
}

}  // namespace
}  // namespace par
