// The memory one process that decodes (`par sample`, `par bench --decode`) will hold,
// planned before the decoder allocates it, and the check that it fits: the weights, the
// decoder's buffers and the samples' caches as they grow (Decoder::memory), and the
// kernels' scratch for its full passes and refills.
#pragma once

#include <cstdint>
#include <functional>

#include "core/decoder.h"
#include "core/model_config.h"
#include "launch/backend.h"
#include "launch/memory_plan.h"

namespace par {

// What one process that decodes (sample, bench --decode) holds.
struct DecodePlanRequest {
  ModelConfig model;
  int64_t samples = 1, tokens = 0;
  // Decoder::memory of the generation for a number of samples (the advice tries fewer).
  std::function<DecoderMemory(int64_t samples)> decoder;
  double params_bytes = 0;        // the weights in backend memory
  double host_weights_bytes = 0;  // a host copy not held yet when planning (fresh weights)
  int threads = 1;
  bool cudnn_attention = false;   // as PlanRequest's, for the full passes and refills
  bool bf16_products = false;
  double runtime_bytes = 0;       // resident_bytes() when planning
};

// What decoding `samples` of r's samples holds, host and device (empty for the CPU
// backend): the weights, the decoder's plan and the kernels' scratch.
MemoryPlan plan_decoder_memory(const DecodePlanRequest& r, int64_t samples, bool cuda);

// UserError unless `r` fits this process's budget on `backend`: the weights, the decoder's
// plan and the kernels' scratch. The message gives the estimate and the most samples that
// would fit, if any does.
// Returns the plan of r.samples samples.
MemoryPlan require_decoder_fits(const DecodePlanRequest& r, Backend& backend);

}  // namespace par
