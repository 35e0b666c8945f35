#include "train/train_step.h"

#include <algorithm>
#include <chrono>

#include "checkpoint/checkpoint_dir.h"
#include "core/error.h"
#include "core/init.h"

namespace par {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Gradients are summed over the data- and sequence-parallel ranks in pieces of this many
// elements, so no message needs a second copy of the whole gradient buffer.
constexpr int64_t kBucketElements = int64_t(1) << 20;

}  // namespace

uint64_t derive_seed(uint64_t seed, uint64_t stream) {  // splitmix64 of (seed, stream)
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

TrainStep::TrainStep(const ModelConfig& model, const OptimizerConfig& opt,
                     const TrainingConfig& training, Ops<float>& ops, const ProcessGrid& grid)
    : model_cfg_(model),
      training_(training),
      ops_(ops),
      grid_(grid),
      model_(model, ops, training.micro_batch / grid.shape().dp, grid.model_groups(),
             training.kv_storage),
      adam_(opt, model_.layout(), ops),
      replica_batch_(training.micro_batch / grid.shape().dp),
      dropout_seed_(derive_seed(training.seed, kDropoutStream)) {
  PAR_ASSERT(training.micro_batch % grid.shape().dp == 0, "checked by validate_run_layout");
}

void TrainStep::initialize(uint64_t seed) {
  std::vector<float> host;
  init_parameters(model_.layout(), seed, host);
  ops_.upload(model_.params(), host.data(), host.size() * sizeof(float));
}

void TrainStep::load(const ModelFile& file) {
  const ParamLayout full(file.model);
  std::vector<float> local(size_t(model_.layout().total()), 0.0f);
  const size_t bytes = local.size() * sizeof(float);
  extract_slices(model_.layout(), full, file.params.data(), local.data());
  ops_.upload(model_.params(), local.data(), bytes);
  if (!file.adam_m.empty()) {
    extract_slices(model_.layout(), full, file.adam_m.data(), local.data());
    ops_.upload(adam_.m(), local.data(), bytes);
    extract_slices(model_.layout(), full, file.adam_v.data(), local.data());
    ops_.upload(adam_.v(), local.data(), bytes);
  }
}

Manifest TrainStep::load_checkpoint(const std::string& dir) {
  // Tensor by tensor straight into the backend's buffers, which hold zeros in the layout's
  // gaps since their allocation: no host copy of the state is made. A damaged piece found
  // part-way leaves a mix, which the caller's next candidate overwrites whole (each visit
  // covers every tensor) or the run stops on.
  float* dest[3] = {model_.params(), adam_.m(), adam_.v()};
  const auto upload = [&](int kind, const ParamInfo& p, const float* values) {
    ops_.upload(dest[kind] + p.offset, values, size_t(p.numel) * sizeof(float));
  };
  const Manifest m = read_manifest(dir);
  visit_checkpoint(dir, m, model_.layout(), true, upload);
  return m;
}

void TrainStep::snapshot(std::vector<float>& params, std::vector<float>& adam_m,
                         std::vector<float>& adam_v) {
  params = download(model_.params());
  adam_m = download(adam_.m());
  adam_v = download(adam_.v());
}

std::vector<float> TrainStep::download(const float* device) const {
  std::vector<float> host(size_t(model_.layout().total()));
  ops_.download(host.data(), device, host.size() * sizeof(float));
  return host;
}

// The tensor-parallel group of world rank 0 assembles the split tensors; world rank 0
// ends up with the whole model.
std::vector<float> TrainStep::gather(const float* device) {
  if (grid_.dp_rank() != 0 || grid_.sp_rank() != 0) return {};
  const std::vector<float> local = download(device);
  const ParamLayout full(model_cfg_);
  const int tp = grid_.shape().tp;
  std::vector<ParamLayout> layouts;
  for (int t = 0; t < tp; ++t) layouts.emplace_back(model_cfg_, t, tp);
  std::vector<float> whole(grid_.tp_rank() == 0 ? size_t(full.total()) : 0, 0.0f), gathered;
  for (const ParamInfo& p : model_.layout().params()) {
    const ParamInfo* f = full.find(p.name);
    if (!p.sharded()) {
      if (!whole.empty()) std::copy_n(local.data() + p.offset, p.numel, whole.data() + f->offset);
      continue;
    }
    gathered.resize(size_t(p.numel) * size_t(tp));
    grid_.tp()->all_gather(local.data() + p.offset, gathered.data(), p.numel, DataType::kFloat32);
    if (whole.empty()) continue;
    for (int t = 0; t < tp; ++t)
      place_slice(*layouts[size_t(t)].find(p.name), gathered.data() + size_t(t) * size_t(p.numel),
                  whole.data() + f->offset);
  }
  return whole;
}

void TrainStep::gather_state(std::vector<float>& params, std::vector<float>& adam_m,
                             std::vector<float>& adam_v) {
  params = gather(model_.params());
  adam_m = gather(adam_.m());
  adam_v = gather(adam_.v());
}

// After backward each rank holds its part of the gradient: sum it over the ranks that
// share the same tensor slice (data and sequence parallel), and over the tensor-parallel
// group for the parameters whose gradient is split there too.
void TrainStep::reduce_gradients() {
  using G = ProcessGrid::GroupName;
  float* g = model_.grads();
  const int64_t total = model_.layout().total();
  const DeviceGroup dp_sp = grid_.device_group(G::kDpSp), tp = grid_.device_group(G::kTp);
  if (dp_sp.size() > 1)
    for (int64_t i = 0; i < total; i += kBucketElements)
      dp_sp->all_reduce(g + i, std::min(kBucketElements, total - i), ReduceOp::kSum);
  if (tp.size() > 1)
    for (const ParamInfo& p : model_.layout().params())
      if (p.grad_summed_over_tp) tp->all_reduce(g + p.offset, p.numel, ReduceOp::kSum);
}

StepResult TrainStep::run(int64_t step, const std::vector<const int32_t*>& micro,
                          const std::vector<const int64_t*>& carry) {
  StepResult r = compute_gradients(step, micro, carry);
  if (r.valid > 0) apply_update(step, r);
  else r.opt.lr = learning_rate(adam_.config(), step);  // nothing to learn from: no update
  return r;
}

void TrainStep::apply_update(int64_t step, StepResult& r) {
  const auto t = Clock::now();
  r.opt = adam_.step(model_.params(), model_.grads(), step, grid_.tp());
  r.optimizer_s = since(t);
}

StepResult TrainStep::compute_gradients(int64_t step, const std::vector<const int32_t*>& micro,
                                        const std::vector<const int64_t*>& carry) {
  PAR_ASSERT(carry.empty() || carry.size() == micro.size());
  const int64_t mb = replica_batch_, N = model_cfg_.context_length;
  const int64_t M = model_cfg_.num_latents, cols = model_.window_columns();
  const int64_t c0 = model_.window_begin();
  // The objective is a mean over the step's valid targets in the global batch, so count
  // them first: every micro-batch's backward then uses the same scale. Each sequence rank
  // counts the targets (columns N-M+1 .. N) among its columns; tensor rank 0 speaks for
  // its group.
  int64_t valid = 0;
  if (grid_.tp_rank() == 0) {
    const int64_t first = std::max(N - M + 1, c0), last = std::min(N, c0 + cols - 1);
    for (const int32_t* windows : micro)
      for (int64_t b = 0; b < mb; ++b)
        for (int64_t c = first; c <= last; ++c) valid += windows[b * cols + c - c0] != kPadToken;
  }
  valid = grid_.world()->all_reduce_value(valid);
  // The loss sums come from the rank holding the latents (tensor rank 0 of it).
  const bool counts = model_.holds_latents() && grid_.tp_rank() == 0;
  StepResult r;
  r.valid = valid;
  model_.zero_grads();
  ForwardContext ctx;
  ctx.training = true;
  ctx.dropout = training_.dropout;
  ctx.cross_attend_dropout = training_.cross_attend_dropout;
  ctx.seed = dropout_seed_;
  ctx.step = uint32_t(step);
  double sums[2] = {0, 0};  // ce, objective
  for (size_t k = 0; k < micro.size(); ++k) {
    ctx.example_base = uint64_t(k) * uint64_t(training_.micro_batch) + uint64_t(replica_first());
    ctx.position_carry = carry.empty() ? nullptr : carry[k];
    auto t = Clock::now();
    const LossSums s = model_.forward(micro[k], mb, ctx);
    r.forward_s += since(t);
    if (counts) {
      sums[0] += s.ce;
      sums[1] += s.objective;
    }
    t = Clock::now();
    if (valid > 0) model_.backward(1.0 / double(valid));
    r.backward_s += since(t);
  }
  grid_.world()->all_reduce(sums, 2, ReduceOp::kSum);
  if (valid == 0) return r;
  r.loss_nats = sums[0] / double(valid);
  r.objective = sums[1] / double(valid);
  const auto t = Clock::now();
  reduce_gradients();
  r.reduce_s = since(t);
  return r;
}

}  // namespace par
