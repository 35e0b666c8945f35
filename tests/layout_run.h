// Runs the model on sp x tp ranks that are threads of this process and gathers what they
// computed into the single-rank layout, for the layout tests of both backends
// (tests/parallel_layout_test.cpp on the CPU, tests/cuda/cuda_layout_test.cpp on a GPU).
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <vector>

#include "core/absolute_positions.h"
#include "core/model.h"
#include "tests/thread_communicator.h"

namespace par::testing_util {

template <typename T>
struct LayoutResult {
  LossSums sums;
  std::vector<T> grads;  // the whole model's gradient, single-rank layout
  bool replicas_agree = true;
};

// Each rank's backend, and (for backends whose memory is not the host's) a communicator
// that carries its buffers over a host one; null `device_comm`: the thread communicators
// serve directly.
template <typename T>
struct RankBackend {
  std::function<std::unique_ptr<Ops<T>>()> make_ops;
  std::function<std::unique_ptr<Communicator>(Communicator& host, Ops<T>& ops)> device_comm;
  KeyValueStorage storage = KeyValueStorage::kNative;  // of every rank's model
};

// One forward and backward of `windows` ([B, N+1]) on the layout: the latents' rank's loss
// sums and the sum of the ranks' gradients (replicated ones taken once, and checked equal).
template <typename T>
LayoutResult<T> run_layout(const ModelConfig& cfg, int sp, int tp,
                           const std::vector<int32_t>& windows, int64_t B,
                           const ForwardContext& ctx, const std::vector<T>& params,
                           int64_t valid, const RankBackend<T>& backend) {
  const ParamLayout full(cfg);
  const int64_t W = cfg.context_length + 1;
  std::vector<std::unique_ptr<ThreadGroup>> sp_groups, tp_groups;
  for (int t = 0; t < tp; ++t) sp_groups.push_back(std::make_unique<ThreadGroup>(sp));
  for (int s = 0; s < sp; ++s) tp_groups.push_back(std::make_unique<ThreadGroup>(tp));
  std::vector<std::vector<T>> grads(size_t(sp * tp));
  std::vector<LossSums> sums(size_t(sp * tp));
  std::vector<std::unique_ptr<ParamLayout>> layouts(size_t(sp * tp));
  run_ranks(sp * tp, [&](int r) {
    const int s = r / tp, t = r % tp;
    ThreadCommunicator spc(*sp_groups[size_t(t)], s), tpc(*tp_groups[size_t(s)], t);
    std::unique_ptr<Ops<T>> ops = backend.make_ops();
    std::unique_ptr<Communicator> sp_dev, tp_dev;
    if (backend.device_comm) {
      sp_dev = backend.device_comm(spc, *ops);
      tp_dev = backend.device_comm(tpc, *ops);
    }
    // The CPU backend's memory is the host's: the thread communicators serve as its
    // device groups too.
    PerceiverAR<T> model(cfg, *ops, B,
                         ModelGroups{DeviceGroup(sp_dev ? *sp_dev : spc),
                                     DeviceGroup(tp_dev ? *tp_dev : tpc), HostGroup(spc)},
                         backend.storage);
    std::vector<T> local(size_t(model.layout().total()), T(0));
    extract_slices(model.layout(), full, params.data(), local.data());
    ops->upload(model.params(), local.data(), local.size() * sizeof(T));
    const int64_t c0 = model.window_begin(), cols = model.window_columns();
    std::vector<int32_t> mine(size_t(B * cols));
    // With absolute positions each rank starts from the carry of its first column.
    std::vector<int64_t> carry(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      std::copy(windows.begin() + b * W + c0, windows.begin() + b * W + c0 + cols,
                mine.begin() + b * cols);
      if (ctx.position_carry)
        carry[size_t(b)] = carry_after(windows.data() + b * W, c0, ctx.position_carry[b]);
    }
    ForwardContext mine_ctx = ctx;
    if (ctx.position_carry) mine_ctx.position_carry = carry.data();
    sums[size_t(r)] = model.forward(mine.data(), B, mine_ctx);
    model.zero_grads();
    model.backward(1.0 / double(valid));
    grads[size_t(r)].resize(local.size());
    ops->download(grads[size_t(r)].data(), model.grads(), local.size() * sizeof(T));
    layouts[size_t(r)] = std::make_unique<ParamLayout>(model.layout());
  });
  LayoutResult<T> out;
  out.sums = sums[size_t((sp - 1) * tp)];  // the latents' rank, tensor rank 0
  out.grads.assign(size_t(full.total()), T(0));
  for (int r = 0; r < sp * tp; ++r) {
    const int t = r % tp;
    for (const ParamInfo& p : layouts[size_t(r)]->params()) {
      const T* g = grads[size_t(r)].data() + p.offset;
      if (!p.sharded() && !p.grad_summed_over_tp) {
        // Replicated and complete on every tensor rank: all copies must agree exactly.
        const T* g0 = grads[size_t(r - t)].data() + p.offset;
        if (!std::equal(g, g + p.numel, g0)) out.replicas_agree = false;
        if (t != 0) continue;
      }
      const ParamInfo* f = full.find(p.name);
      for (int64_t i = 0; i < p.numel; ++i) out.grads[size_t(f->offset + p.global_index(i))] += g[i];
    }
  }
  return out;
}

}  // namespace par::testing_util
