// Adam/AdamW with global-norm clipping and a warm-up + constant/cosine learning rate
// (spec/MODEL.md section 9). Full float32 moments in backend memory, laid out like the
// parameters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/groups.h"
#include "core/ops.h"
#include "core/param_layout.h"

namespace par {

struct OptimizerConfig {
  double lr = 3e-4;
  double min_lr = 0;          // floor of the cosine schedule
  int64_t warmup_steps = 0;   // linear from 0 to lr over these steps
  std::string schedule = "constant";  // "constant" or "cosine" (after warm-up)
  int64_t total_steps = 1;    // the cosine schedule ends here
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;    // decoupled; applies to matrices and the embedding only
  double clip_norm = 1.0;     // global gradient norm limit; 0 disables clipping

  void validate() const;      // UserError naming the option
};

// Learning rate of 0-based step `step`.
double learning_rate(const OptimizerConfig& c, int64_t step);

// The layout as few spans as the weight decay allows (AdamSpan): one span of the whole
// buffer without decay; with it, runs of tensors that decay (matrices, the embedding) or
// not. Alignment gaps go to a neighbour (they hold zeros, which an update keeps zero).
std::vector<AdamSpan> adam_spans(const ParamLayout& layout, bool weight_decay);

struct OptimizerStats {
  double grad_norm = 0;  // before clipping
  double lr = 0;
  double clip_scale = 1;
};

template <typename T>
class Adam {
 public:
  Adam(const OptimizerConfig& cfg, const ParamLayout& layout, Ops<T>& ops);
  ~Adam();
  Adam(const Adam&) = delete;
  Adam& operator=(const Adam&) = delete;

  // One update of `params` from `grads` (complete: already summed over data- and
  // sequence-parallel ranks) for 0-based step `step`. `tp` is the tensor-parallel group
  // (empty for none; it sums a host number, the squared norm): the gradient norm counts
  // each slice of a split tensor once and each replicated tensor once.
  OptimizerStats step(T* params, const T* grads, int64_t step, HostGroup tp = {});

  T* m() { return m_; }
  T* v() { return v_; }
  const OptimizerConfig& config() const { return cfg_; }
  void set_config(const OptimizerConfig& cfg) { cfg_ = cfg; }

 private:
  OptimizerConfig cfg_;
  const ParamLayout& layout_;
  Ops<T>& ops_;
  T* m_ = nullptr;
  T* v_ = nullptr;
};

}  // namespace par
