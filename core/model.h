// The Perceiver AR model of spec/MODEL.md with an explicit forward and backward pass,
// written once against the backend interface (Ops).
//
// One object owns the parameters, their gradients and the activations of one
// micro-batch, each in a single allocation of backend memory. forward() runs the model
// and the loss on a batch of token windows; backward() accumulates the gradient of the
// training objective into grads().
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

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
};

struct LossSums {
  double ce = 0;         // sum of cross-entropy (nats) over valid targets
  double objective = 0;  // sum of ce + z_loss * lse^2 over valid targets
  int64_t valid = 0;     // targets that are not PAD
};

template <typename T>
class PerceiverAR {
 public:
  static constexpr double kLayerNormEps = 1e-5;
  static constexpr double kZLoss = 1e-4;

  PerceiverAR(const ModelConfig& cfg, Ops<T>& ops, int64_t max_batch);
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

  // windows: host int32 [batch, N+1] (inputs w[0..N-1], latent i predicts w[N-M+i+1]).
  LossSums forward(const int32_t* windows, int64_t batch, const ForwardContext& ctx);
  // Adds the gradient of loss_scale * (objective sum of the last forward) to grads().
  // The trainer passes 1 / (valid targets in the global batch).
  void backward(double loss_scale);

  // Results of the last forward, copied to the host.
  std::vector<T> logits() const;  // [batch, M, V]
  std::vector<T> ce() const;      // [batch, M] (0 for PAD targets)
  std::vector<T> lse() const;     // [batch, M]

  // Bytes of backend memory held (parameters, gradients, activations).
  size_t memory_bytes() const { return bytes_; }

 private:
  struct Acts;
  void attention_block_forward(int64_t l, const T* x_in, T* x_out);
  void attention_block_backward(int64_t l, T* dx);
  void mlp_block_forward(const NormRef<T>& ln, const MlpRef<T>& mlp, int64_t slot,
                         uint32_t site, const T* x_in, T* x_out);
  void mlp_block_backward(const NormRef<T>& ln, const MlpRef<T>& mlp, const NormRef<T>& dln,
                          const MlpRef<T>& dmlp, int64_t slot, uint32_t site, const T* x_in,
                          T* dx);
  void cross_attention_backward(T* dx);

  ModelConfig cfg_;
  Ops<T>& ops_;
  ParamLayout layout_;
  int64_t max_batch_;
  T* params_ = nullptr;
  T* grads_ = nullptr;
  ModelRef<T> p_, g_;
  std::unique_ptr<Acts> a_;
  void* act_memory_ = nullptr;
  size_t bytes_ = 0;
  RotarySpec rot_cross_, rot_self_;
  // State of the last forward, needed by backward.
  int64_t batch_ = 0;
  ForwardContext ctx_;
};

}  // namespace par
