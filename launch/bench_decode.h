// `par bench --decode K`: generation speed, cached decoding against uncached.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "launch/backend.h"
#include "launch/memory_plan.h"
#include "launch/options.h"

namespace par {

// Decodes `tokens` tokens for each of `samples` samples cached (one batch), and a few for one
// sample uncached, after a prompt of random tokens that (nearly) fills the context; prints
// the rates (in total and per sample), and with `profile` the time of each op per cached
// step. `weights`: the parameters in layout order (a trained model's, from a checkpoint),
// or null for freshly initialized ones. `step_capture`: Decoder::set_step_capture. The
// peak memory, resident and on the device, is printed beside `plan` (the decode's memory
// plan: launch/decode_memory_plan.h). One process.
int bench_decode(const ModelConfig& mc, const RunConfig& rc, int64_t tokens, int64_t samples,
                 const std::vector<float>* weights, Backend& backend, const MemoryPlan& plan,
                 bool profile, bool step_capture);

}  // namespace par
