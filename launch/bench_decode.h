// `par bench --decode K`: generation speed, cached decoding against uncached.
#pragma once

#include <cstdint>

#include "core/model_config.h"
#include "core/ops.h"
#include "launch/options.h"

namespace par {

// Decodes `tokens` tokens cached and a few uncached after a prompt that (nearly) fills the
// context, on freshly initialized weights; prints both rates, and with `profile` the time
// of each op per cached token. One process.
int bench_decode(const ModelConfig& mc, const RunConfig& rc, int64_t tokens, Ops<float>& ops,
                 bool profile, const std::string& backend_description);

}  // namespace par
