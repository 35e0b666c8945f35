// Block evaluation (spec/MODEL.md section 11): every token of each shard's stream after
// the first is scored exactly once, by a forward pass whose latents sit on the M inputs
// before it and whose window holds the N-M tokens before those (left-padded with PAD at
// the start of the stream, right-padded in the last, partial block).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/model.h"

namespace par {

struct EvalResult {
  int64_t tokens = 0;     // targets scored (PAD targets are not)
  double loss_nats = 0;   // mean cross-entropy per scored target
  double accuracy = 0;    // fraction of scored targets that are the most likely token
  double bits_per_token() const;
};

// The window of block `block` of a stream of `stream_len` tokens, read via `read(begin,
// count, out)`: out[j] = t[block*M - (N-M) + j] inside the stream, PAD outside.
void block_window(int64_t block, int64_t stream_len, int64_t N, int64_t M,
                  const std::function<void(int64_t, int64_t, int32_t*)>& read, int32_t* out);

// Evaluates the shards as separate streams, in order, batching blocks up to the model's
// max_batch; stops once `max_targets` targets are scored (0: all). `progress` (optional)
// sees the targets scored so far.
template <typename T>
EvalResult evaluate_blocks(PerceiverAR<T>& model, const std::vector<std::string>& shards,
                           int64_t max_targets,
                           const std::function<void(int64_t)>& progress = {});

}  // namespace par
