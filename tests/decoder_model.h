// The small model that the decoder's CPU tests decode with (tests/decoder_test.cpp,
// tests/decoder_replay_test.cpp): N = 64, M = 8, a 19-token vocabulary, and random
// parameters whose LayerNorm weights sit near 1.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model_config.h"
#include "core/param_layout.h"
#include "tests/test_util.h"

namespace par::testing_util {

inline ModelConfig small_decoder_config(PositionEncoding pe = PositionEncoding::kRotary) {
  return ModelConfig{.vocab_size = 19, .d_model = 16, .context_length = 64, .num_latents = 8,
                     .num_layers = 2, .cross_heads = 2, .self_heads = 4, .mlp_factor = 2,
                     .position_encoding = pe};
}

template <typename T>
std::vector<T> small_decoder_params(const ModelConfig& c, uint64_t seed) {
  const ParamLayout layout(c);
  auto p = random_vector<T>(layout.total(), seed, 0.4);
  for (const ParamInfo& info : layout.params())
    if (info.kind == ParamKind::kNormWeight)
      for (int64_t i = 0; i < info.numel; ++i) p[size_t(info.offset + i)] += T(1);
  return p;
}

}  // namespace par::testing_util
