// The model case of the CUDA model tests, shared with the precision-emulation test: a small
// model with odd sizes, PAD tokens and both kinds of dropout, its inputs and parameters, one
// forward and backward pass, and the tolerances of a whole pass per matrix-product
// precision.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/init.h"
#include "core/model.h"
#include "kernels/cuda/cuda_ops.h"

namespace par::cuda_test {

using cuda::MatmulPrecision;

// Head sizes 16 (cross) and 12 (self), nothing a multiple of 32.
inline ModelConfig odd_config() {
  ModelConfig c{.vocab_size = 37, .d_model = 48, .context_length = 70, .num_latents = 17,
                .num_layers = 2, .cross_heads = 3, .self_heads = 4, .mlp_factor = 3};
  return c;
}

inline constexpr int64_t kBatch = 3;

inline std::vector<int32_t> windows(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(1, int32_t(c.vocab_size - 1));
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int32_t> w(size_t(kBatch * (c.context_length + 1)));
  for (auto& t : w) t = u(rng) < 0.1 ? 0 : tok(rng);
  return w;
}

// The spec's initialization, with a random head and random norm parameters and biases, so
// that every gradient is non-trivial.
inline std::vector<float> parameters(const ParamLayout& layout, int64_t d) {
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

inline ForwardContext training_context(uint32_t step) {
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

inline Result forward_backward(Ops<float>& ops, const ModelConfig& cfg,
                               const std::vector<float>& params, const std::vector<int32_t>& w,
                               KeyValueStorage storage = KeyValueStorage::kNative,
                               const ForwardContext& ctx = training_context(3)) {
  PerceiverAR<float> model(cfg, ops, kBatch, {}, storage);
  ops.upload(model.params(), params.data(), params.size() * sizeof(float));
  Result r;
  r.loss = model.forward(w.data(), kBatch, ctx);
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
inline ModelTol model_tol(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::kFloat32: return {1e-5, 1e-4, 2e-4, 1e-4, 1e-2};
    case MatmulPrecision::kTF32: return {3e-3, 2e-2, 3e-2, 5e-3, 1e-1};
    case MatmulPrecision::kBF16: return {3e-2, 8e-2, 1e-1, 5e-2, 3e-1};
  }
  return {};
}

// The same with the input side's keys and values stored in bfloat16: each backend rounds
// them (and their gradients) once, and where the two backends' float results fall on
// either side of a bfloat16 midpoint they end a bfloat16 step (2^-8) apart. The keys' bias
// gradient, a sum over every key row that mostly cancels, then moves by far more than its
// float32 tolerance: the CPU's float pass against its double pass, on this file's model
// and 16 seeds, was up to 2.6e-3 in the gradients and 1.35e-4 in the logits (1e-6 with
// float32 storage). Floors above those, still far below what a wrong kernel gives.
inline ModelTol bf16_storage_tol(MatmulPrecision p) {
  ModelTol t = model_tol(p);
  t.grads = std::max(t.grads, 1e-2);
  t.logits = std::max(t.logits, 1e-3);
  return t;
}

}  // namespace par::cuda_test
