#include "launch/evaluate.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "data/shard.h"

namespace par {

double EvalResult::bits_per_token() const { return loss_nats / std::log(2.0); }

void block_window(int64_t block, int64_t stream_len, int64_t N, int64_t M, int64_t c0,
                  int64_t cols, const std::function<void(int64_t, int64_t, int32_t*)>& read,
                  int32_t* out) {
  const int64_t first = block * M - (N - M) + c0;  // stream index of out[0]
  const int64_t begin = std::max<int64_t>(0, first);
  const int64_t end = std::min(stream_len, first + cols);
  std::fill(out, out + cols, 0);
  if (end > begin) read(begin, end - begin, out + (begin - first));
}

namespace {

// Targets ([batch, M]) whose most likely token is the target.
template <typename T>
int64_t count_correct(const std::vector<T>& logits, const std::vector<int32_t>& targets,
                      int64_t batch, int64_t M, int64_t V) {
  int64_t correct = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < M; ++i) {
      const int32_t target = targets[size_t(b * M + i)];
      if (target == 0) continue;
      const T* row = logits.data() + (b * M + i) * V;
      correct += std::max_element(row, row + V) - row == target;
    }
  return correct;
}

}  // namespace

template <typename T>
EvalResult evaluate_blocks(PerceiverAR<T>& model, const std::vector<std::string>& shards,
                           int64_t max_targets, const std::function<void(int64_t)>& progress,
                           const ProcessGrid* grid) {
  const ModelConfig& c = model.config();
  const int64_t N = c.context_length, M = c.num_latents;
  const int64_t c0 = model.window_begin(), cols = model.window_columns();
  const int64_t batch = model.max_batch();
  const int dp = grid ? grid->shape().dp : 1, replica = grid ? grid->dp_rank() : 0;
  const bool counts = model.holds_latents() && (!grid || grid->tp_rank() == 0);
  const int64_t budget =
      max_targets > 0 ? (max_targets + M - 1) / M : std::numeric_limits<int64_t>::max();
  std::vector<int32_t> windows(size_t(batch * cols));
  double sums[3] = {0, 0, 0};  // ce, targets, correct
  int64_t blocks_done = 0, batch_index = 0;
  for (const std::string& path : shards) {
    const ShardReader reader(path);
    const int64_t S = reader.info().num_tokens;
    const int64_t blocks = S > 1 ? (S - 1 + M - 1) / M : 0;
    auto read = [&](int64_t begin, int64_t count, int32_t* out) {
      reader.read(begin, count, out, c.vocab_size);
    };
    for (int64_t b0 = 0; b0 < blocks && blocks_done < budget; b0 += batch) {
      const int64_t nb = std::min({batch, blocks - b0, budget - blocks_done});
      blocks_done += nb;
      if (batch_index++ % dp != replica) continue;  // another replica's turn
      for (int64_t i = 0; i < nb; ++i)
        block_window(b0 + i, S, N, M, c0, cols, read, windows.data() + i * cols);
      const LossSums s = model.forward(windows.data(), nb, ForwardContext{});
      if (!counts) continue;
      sums[0] += s.ce;
      sums[1] += double(s.valid);
      sums[2] += double(count_correct(model.logits(), model.targets(), nb, M, c.vocab_size));
      if (progress) progress(int64_t(sums[1]));
    }
  }
  if (grid) grid->world().all_reduce(sums, 3, ReduceOp::kSum);
  EvalResult r;
  r.tokens = int64_t(sums[1]);
  r.loss_nats = r.tokens > 0 ? sums[0] / sums[1] : 0.0;
  r.accuracy = r.tokens > 0 ? sums[2] / sums[1] : 0.0;
  return r;
}

template EvalResult evaluate_blocks<float>(PerceiverAR<float>&, const std::vector<std::string>&,
                                           int64_t, const std::function<void(int64_t)>&,
                                           const ProcessGrid*);
template EvalResult evaluate_blocks<double>(PerceiverAR<double>&,
                                            const std::vector<std::string>&, int64_t,
                                            const std::function<void(int64_t)>&,
                                            const ProcessGrid*);

}  // namespace par
