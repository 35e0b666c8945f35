// Model FLOPs of a training step: the matrix products of the forward pass (linear layers
// and both attention products over the causally visible pairs), times 3 for forward plus
// backward. Recomputation (the attention scores in backward) is not model work and is not
// counted, so FLOP/s computed from this are "model FLOP/s" (as in MFU figures).
#pragma once

#include <cstdint>

#include "core/model_config.h"

namespace par {

inline double forward_flops_per_example(const ModelConfig& c) {
  const double N = double(c.context_length), M = double(c.num_latents), d = double(c.d_model);
  const double F = double(c.mlp_width()), V = double(c.vocab_size);
  auto linear = [](double rows, double in, double out) { return 2 * rows * in * out; };
  // Latent i (position N-M+i) sees inputs 0..N-M+i; latents see latents 0..i.
  const double cross_pairs = M * (N - M) + M * (M + 1) / 2;
  const double self_pairs = M * (M + 1) / 2;
  double f = 2 * linear(N, d, d)                        // k, v of every input
             + 3 * linear(M, d, d)                      // z_linear, q, o
             + linear(M, d, F) + linear(M, F, d)        // cross MLP
             + 2 * 2 * cross_pairs * d;                 // q.k and p.v
  f += double(c.num_layers) *
       (4 * linear(M, d, d) + linear(M, d, F) + linear(M, F, d) + 2 * 2 * self_pairs * d);
  f += linear(M, d, V);  // head
  return f;
}

inline double train_flops_per_example(const ModelConfig& c) {
  return 3 * forward_flops_per_example(c);
}

}  // namespace par
