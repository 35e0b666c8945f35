// One optimizer step of training on one process: forward and backward over the
// micro-batches, gradient clipping and the Adam update. Shared by `par train` and
// `par bench`, so the benchmark times exactly what training runs.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "checkpoint/model_file.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "launch/options.h"

namespace par {

struct StepResult {
  double loss_nats = 0;   // mean cross-entropy over valid targets
  double objective = 0;   // mean of ce + z-loss (what is minimized)
  int64_t valid = 0;      // valid targets in the step
  OptimizerStats opt;
  double forward_s = 0, backward_s = 0, optimizer_s = 0;  // where the step's time went
};

class TrainStep {
 public:
  TrainStep(const ModelConfig& model, const OptimizerConfig& opt, const RunConfig& run,
            Ops<float>& ops);

  PerceiverAR<float>& model() { return model_; }
  Adam<float>& adam() { return adam_; }

  void initialize(uint64_t seed);       // fresh parameters (spec/MODEL.md section 8)
  void load(const ModelFile& file);     // parameters and, if present, Adam moments

  // micro[k] holds micro_batch() windows of N+1 tokens (host) for micro-batch k.
  StepResult run(int64_t step, const std::vector<const int32_t*>& micro);

  std::vector<float> download(const float* device) const;
  const float* params() { return model_.params(); }

 private:
  ModelConfig model_cfg_;
  RunConfig run_;
  Ops<float>& ops_;
  PerceiverAR<float> model_;
  Adam<float> adam_;
  uint64_t dropout_seed_ = 0;
};

// Seeds of the independent random streams of a run, derived from --seed.
uint64_t derive_seed(uint64_t seed, uint64_t stream);
inline constexpr uint64_t kDataStream = 1;
inline constexpr uint64_t kDropoutStream = 2;

}  // namespace par
