#include "launch/train_step.h"

#include <chrono>

#include "core/init.h"

namespace par {

uint64_t derive_seed(uint64_t seed, uint64_t stream) {  // splitmix64 of (seed, stream)
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

TrainStep::TrainStep(const ModelConfig& model, const OptimizerConfig& opt, const RunConfig& run,
                     Ops<float>& ops)
    : model_cfg_(model),
      run_(run),
      ops_(ops),
      model_(model, ops, run.micro_batch()),
      adam_(opt, model_.layout(), ops),
      dropout_seed_(derive_seed(run.seed, kDropoutStream)) {}

void TrainStep::initialize(uint64_t seed) {
  std::vector<float> host;
  init_parameters(model_.layout(), seed, host);
  ops_.upload(model_.params(), host.data(), host.size() * sizeof(float));
}

void TrainStep::load(const ModelFile& file) {
  const size_t bytes = size_t(model_.layout().total()) * sizeof(float);
  ops_.upload(model_.params(), file.params.data(), bytes);
  if (!file.adam_m.empty()) {
    ops_.upload(adam_.m(), file.adam_m.data(), bytes);
    ops_.upload(adam_.v(), file.adam_v.data(), bytes);
  }
}

std::vector<float> TrainStep::download(const float* device) const {
  std::vector<float> host(size_t(model_.layout().total()));
  ops_.download(host.data(), device, host.size() * sizeof(float));
  return host;
}

StepResult TrainStep::run(int64_t step, const std::vector<const int32_t*>& micro) {
  const int64_t mb = run_.micro_batch(), N = model_cfg_.context_length;
  const int64_t M = model_cfg_.num_latents, W = N + 1;
  // The objective is a mean over the step's valid targets, so count them first: every
  // micro-batch's backward then uses the same scale.
  int64_t valid = 0;
  for (const int32_t* windows : micro)
    for (int64_t b = 0; b < mb; ++b)
      for (int64_t i = 0; i < M; ++i) valid += windows[b * W + N - M + i + 1] != 0;
  StepResult r;
  r.valid = valid;
  model_.zero_grads();
  ForwardContext ctx;
  ctx.training = true;
  ctx.dropout = run_.dropout;
  ctx.cross_attend_dropout = run_.cross_attend_dropout;
  ctx.seed = dropout_seed_;
  ctx.step = uint32_t(step);
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  double ce = 0, obj = 0;
  for (size_t k = 0; k < micro.size(); ++k) {
    ctx.example_base = uint64_t(k) * uint64_t(mb);
    auto t = Clock::now();
    const LossSums s = model_.forward(micro[k], mb, ctx);
    r.forward_s += since(t);
    ce += s.ce;
    obj += s.objective;
    t = Clock::now();
    if (valid > 0) model_.backward(1.0 / double(valid));
    r.backward_s += since(t);
  }
  if (valid > 0) {
    r.loss_nats = ce / double(valid);
    r.objective = obj / double(valid);
    const auto t = Clock::now();
    r.opt = adam_.step(model_.params(), model_.grads(), step);
    r.optimizer_s = since(t);
  } else {
    r.opt.lr = learning_rate(adam_.config(), step);  // nothing to learn from: no update
  }
  return r;
}

}  // namespace par
