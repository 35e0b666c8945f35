// The Perceiver AR model of spec/MODEL.md with an explicit forward and backward pass,
// written once against the backend interface (Ops) and the parallel one (Communicator).
//
// One object owns this rank's parameters, their gradients and the activations of one
// micro-batch, each in a single allocation of backend memory. forward() runs the model
// and the loss on a batch of token windows; backward() accumulates this rank's part of
// the gradient of the training objective into grads().
//
// Parallel layout (shared/DESIGN.md). In a sequence-parallel group of size S, rank r holds
// input positions [r*N/S, (r+1)*N/S): it embeds them, projects their keys and values and
// attends from all M latent queries over them; the partial results are merged in
// log-sum-exp form. The latents themselves (their queries, the latent stack, the loss)
// live on the last rank; when they are more than one slice (M > N/S), the ranks holding
// their positions send it their embeddings and targets ([M, d] and M ids per example). In a tensor-parallel group the
// heads and MLP hidden units are split (ParamLayout). Messages are [M, d]-sized whatever N
// is. After backward(), grads() holds this rank's part: summing it over the data- and
// sequence-parallel ranks (and, for parameters with grad_summed_over_tp, the
// tensor-parallel ones too) gives the gradient of the whole model.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/absolute_positions.h"
#include "core/blocks.h"
#include "core/constants.h"
#include "core/groups.h"
#include "core/key_value_storage.h"
#include "core/model_config.h"
#include "core/ops.h"
#include "core/param_layout.h"
#include "core/rotary.h"

namespace par {

// Everything a forward pass needs besides the tokens.
struct ForwardContext {
  bool training = false;
  double dropout = 0;               // residual dropout (training only)
  double cross_attend_dropout = 0;  // input positions dropped from the keys (training only)
  uint64_t seed = 0;
  uint32_t step = 0;
  // Index of this micro-batch's first example within the step's global batch: the
  // example coordinate of every random draw (spec/MODEL.md section 7).
  uint64_t example_base = 0;
  // With absolute positions: [batch], host, the carry of each window at this rank's first
  // column (core/absolute_positions.h: the document position of the token before it).
  // Null means 0 for every window (windows that start a document; only on the rank that
  // holds column 0).
  const int64_t* position_carry = nullptr;
};

// UserError unless the model can be laid out over sp x tp ranks (names the options).
void validate_layout(const ModelConfig& cfg, int sp, int tp);

// Backend memory one PerceiverAR object allocates, in bytes (floating point, so that a
// config far too large to allocate gives a huge number rather than a wrapped-around one).
struct ModelMemory {
  double param_elements = 0;  // layout().total(): parameters with their alignment gaps
  double params = 0;          // parameters; the gradients take as much again
  double activations = 0;     // the activation arena of max_batch examples
  double total() const { return 2 * params + activations; }
};

struct LossSums {
  double ce = 0;         // sum of cross-entropy (nats) over valid targets
  double objective = 0;  // sum of ce + z_loss * lse^2 over valid targets
  int64_t valid = 0;     // targets that are not PAD
};

template <typename T>
class PerceiverAR {
 public:
  // With KeyValueStorage::kBf16 the input side takes three [B, N/sp, d] tensors of T where
  // it takes four otherwise (without tensor parallelism; three at tp = 2;
  // Acts::carve_bf16_inputs in model.cpp).
  PerceiverAR(const ModelConfig& cfg, Ops<T>& ops, int64_t max_batch, ModelGroups groups = {},
              KeyValueStorage kv = KeyValueStorage::kNative);
  // What the constructor will allocate on each rank of an sp x tp layout, computed by
  // the sizing pass the constructor allocates by (it checks that the two agree), without
  // allocating anything: memory planning calls it before a run starts.
  static ModelMemory memory(const ModelConfig& cfg, int64_t max_batch, int sp, int tp,
                            KeyValueStorage kv = KeyValueStorage::kNative);
  ~PerceiverAR();
  PerceiverAR(const PerceiverAR&) = delete;
  PerceiverAR& operator=(const PerceiverAR&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  int64_t max_batch() const { return max_batch_; }
  Ops<T>& ops() { return ops_; }

  T* params() { return params_; }  // backend memory, layout() order
  T* grads() { return grads_; }
  void zero_grads();

  // The columns of each N+1-token window this rank reads: [window_begin(),
  // window_begin() + window_columns()). All N+1 on a single rank.
  int64_t window_begin() const { return pos0_; }
  int64_t window_columns() const { return n_local_ + (holds_latents() ? 1 : 0); }
  // Whether this rank holds the latents (and so the loss): the last sequence rank.
  bool holds_latents() const { return sp_rank_ == sp_size_ - 1; }

  // windows: host int32 [batch, window_columns()], this rank's columns of each window
  // (inputs w[0..N-1]; latent i predicts w[N-M+i+1]). Returns the loss sums on the rank
  // that holds the latents, zeros elsewhere.
  LossSums forward(const int32_t* windows, int64_t batch, const ForwardContext& ctx);
  // Adds the gradient of loss_scale * (objective sum of the last forward) to grads().
  // The trainer passes 1 / (valid targets in the global batch).
  void backward(double loss_scale);

  // The targets of the last forward ([batch, M], host; complete on the latents' rank).
  const std::vector<int32_t>& targets() const { return targets_; }
  // Results of the last forward, copied to the host (on the rank holding the latents).
  std::vector<T> logits() const;  // [batch, M, V]
  std::vector<T> ce() const;      // [batch, M] (0 for PAD targets)
  std::vector<T> lse() const;     // [batch, M]

  // Bytes of backend memory held (parameters, gradients, activations).
  size_t memory_bytes() const { return bytes_; }

 private:
  struct Acts;
  // What the blocks (core/blocks.h) of the latents need for the last forward.
  LatentPass<T> latent_pass() const;
  RotaryTables<T> self_rotary() const;
  BlockGradScratch<T> grad_scratch() const;
  void keys_values_forward();
  void keys_values_backward();
  void cross_attention_backward(T* dx);
  void merge_attention();
  AttentionShape cross_attention_shape() const;
  AttentionShape self_attention_shape() const;
  void add_absolute_positions(const int32_t* windows, const int64_t* carry);
  void gather_inputs(T* into, T* scratch);

  ModelConfig cfg_;
  Ops<T>& ops_;
  ModelGroups groups_;
  int sp_rank_ = 0, sp_size_ = 1, tp_rank_ = 0, tp_size_ = 1;
  int64_t n_local_ = 0, pos0_ = 0;  // this rank's input positions [pos0_, pos0_ + n_local_)
  int64_t cross_width_ = 0, self_width_ = 0, mlp_width_ = 0;  // local (tensor-parallel) widths
  int64_t latent_first_ = 0, latent_count_ = 0;  // the latents whose positions this rank holds
  bool latents_split_ = false;                   // M > N/S: the latents span several ranks
  std::vector<int32_t> targets_;
  ParamLayout layout_;
  int64_t max_batch_;
  KeyValueStorage kv_storage_;
  T* params_ = nullptr;
  T* grads_ = nullptr;
  ModelRef<T> p_, g_;
  std::unique_ptr<Acts> a_;
  void* act_memory_ = nullptr;
  size_t bytes_ = 0;
  RotarySpec rot_cross_, rot_self_;
  std::unique_ptr<PositionTable<T>> positions_;  // with absolute positions only
  // State of the last forward, needed by backward.
  int64_t batch_ = 0;
  bool every_key_kept_ = false;  // no PAD among this rank's inputs and no key dropout
  ForwardContext ctx_;
};

}  // namespace par
