// Block evaluation (spec/MODEL.md section 11): every token of each shard's stream after
// the first is scored exactly once, by a forward pass whose latents sit on the M inputs
// before it and whose window holds the N-M tokens before those (left-padded with PAD at
// the start of the stream, right-padded in the last, partial block).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/model.h"
#include "parallel/process_grid.h"

namespace par {

struct EvalResult {
  int64_t tokens = 0;     // targets scored (PAD targets are not)
  double loss_nats = 0;   // mean cross-entropy per scored target
  double accuracy = 0;    // fraction of scored targets that are the most likely token
  double bits_per_token() const;
};

// Columns [c0, c0 + cols) of the window of block `block` of a stream of `stream_len`
// tokens, read via `read(begin, count, out)`: out[j] = t[block*M - (N-M) + c0 + j] inside
// the stream, PAD outside.
void block_window(int64_t block, int64_t stream_len, int64_t N, int64_t M, int64_t c0,
                  int64_t cols, const std::function<void(int64_t, int64_t, int32_t*)>& read,
                  int32_t* out);

// Which targets count: those whose position in their document (spec/MODEL.md section 13,
// 1-based, counted from the stream's start or the last EOS) lies in [first, last]. The
// default takes them all. E.g. the copied half of `par prep copy --length 2h+2` examples is
// [h+1, 2h].
struct ScoredPositions {
  int64_t first = 1;
  int64_t last = INT64_MAX;
  bool all() const { return first <= 1 && last == INT64_MAX; }
  bool holds(int64_t position) const { return position >= first && position <= last; }
};
// "FIRST:LAST"; UserError naming `option` otherwise.
ScoredPositions parse_scored_positions(const std::string& text, const std::string& option);

// Evaluates the shards as separate streams, in order, batching blocks up to the model's
// max_batch; stops after the block in which the scored targets reach `max_targets` (0:
// all): ceil(max_targets / M) blocks where every target is scored. With a grid, the data-parallel replicas take turns with the
// batches, each rank reads its columns of the windows, and every rank returns the totals.
// `progress` (optional) sees the targets this replica scored so far.
template <typename T>
EvalResult evaluate_blocks(PerceiverAR<T>& model, const std::vector<std::string>& shards,
                           int64_t max_targets, const std::function<void(int64_t)>& progress = {},
                           const ProcessGrid* grid = nullptr, const ScoredPositions& only = {});

}  // namespace par
