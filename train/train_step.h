// One optimizer step of training on this rank: forward and backward over the
// micro-batches, the gradient sums across ranks, clipping and the Adam update. Shared by
// `par train` and `par bench`, so the benchmark times exactly what training runs.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "checkpoint/checkpoint_dir.h"
#include "checkpoint/model_file.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "parallel/process_grid.h"
#include "train/training_config.h"

namespace par {

struct StepResult {
  double loss_nats = 0;   // mean cross-entropy over the step's valid targets (all ranks)
  double objective = 0;   // mean of ce + z-loss (what is minimized)
  int64_t valid = 0;      // valid targets in the step's global batch
  OptimizerStats opt;
  double forward_s = 0, backward_s = 0, reduce_s = 0, optimizer_s = 0;  // this rank's time
};

class TrainStep {
 public:
  // The model's and the gradient sums' collectives run over the grid's groups: the device
  // ones for the backend's buffers, the host ones for host data.
  TrainStep(const ModelConfig& model, const OptimizerConfig& opt, const TrainingConfig& training,
            Ops<float>& ops, const ProcessGrid& grid);

  PerceiverAR<float>& model() { return model_; }
  Adam<float>& adam() { return adam_; }
  const ProcessGrid& grid() const { return grid_; }

  // Examples of each micro-batch this data-parallel replica takes, and the first of them
  // within the global micro-batch.
  int64_t replica_batch() const { return replica_batch_; }
  int64_t replica_first() const { return replica_batch_ * grid_.dp_rank(); }

  void initialize(uint64_t seed);    // fresh parameters (spec/MODEL.md section 8)
  void load(const ModelFile& file);  // this rank's slices of a whole model (and Adam moments)
  // This rank's slices of a checkpoint directory written by any layout; returns its manifest.
  Manifest load_checkpoint(const std::string& dir);
  // Host copies of this rank's parameters and Adam moments (for a checkpoint).
  void snapshot(std::vector<float>& params, std::vector<float>& adam_m, std::vector<float>& adam_v);

  // micro[k]: this replica's examples of micro-batch k, each its model().window_columns()
  // columns of the window starting at model().window_begin() (host). With absolute
  // positions, carry[k] gives each example's carry at that column (ForwardContext); empty
  // means 0 for all.
  // run = compute_gradients, then (if there was anything to learn from) apply_update.
  StepResult run(int64_t step, const std::vector<const int32_t*>& micro,
                 const std::vector<const int64_t*>& carry = {});
  // Forward and backward over the micro-batches and the sums across ranks: afterwards
  // model().grads() holds this rank's slices of the whole batch's gradient.
  StepResult compute_gradients(int64_t step, const std::vector<const int32_t*>& micro,
                               const std::vector<const int64_t*>& carry = {});
  void apply_update(int64_t step, StepResult& r);
  // The whole model's gradient (after compute_gradients) on world rank 0, empty elsewhere.
  std::vector<float> gather_gradients() { return gather(model_.grads()); }

  // The whole model's parameters and Adam moments on world rank 0 (empty elsewhere), in
  // the single-rank layout. Collective.
  void gather_state(std::vector<float>& params, std::vector<float>& adam_m,
                    std::vector<float>& adam_v);

 private:
  std::vector<float> download(const float* device) const;
  std::vector<float> gather(const float* device);
  void reduce_gradients();

  ModelConfig model_cfg_;
  TrainingConfig training_;
  Ops<float>& ops_;
  const ProcessGrid& grid_;
  PerceiverAR<float> model_;
  Adam<float> adam_;
  int64_t replica_batch_ = 0;
  uint64_t dropout_seed_ = 0;
};

// Seeds of the independent random streams of a run, derived from --seed.
uint64_t derive_seed(uint64_t seed, uint64_t stream);
inline constexpr uint64_t kDataStream = 1;
inline constexpr uint64_t kDropoutStream = 2;

}  // namespace par
