#include "launch/evaluate.h"

#include <algorithm>
#include <cmath>

#include "data/shard.h"

namespace par {

double EvalResult::bits_per_token() const { return loss_nats / std::log(2.0); }

void block_window(int64_t block, int64_t stream_len, int64_t N, int64_t M,
                  const std::function<void(int64_t, int64_t, int32_t*)>& read, int32_t* out) {
  const int64_t first = block * M - (N - M);  // stream index of window position 0
  const int64_t begin = std::max<int64_t>(0, first);
  const int64_t end = std::min(stream_len, first + N + 1);
  std::fill(out, out + N + 1, 0);
  if (end > begin) read(begin, end - begin, out + (begin - first));
}

template <typename T>
int64_t count_correct(const std::vector<T>& logits, const int32_t* windows, int64_t batch,
                      int64_t N, int64_t M, int64_t V) {
  int64_t correct = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < M; ++i) {
      const int32_t target = windows[b * (N + 1) + N - M + i + 1];
      if (target == 0) continue;
      const T* row = logits.data() + (b * M + i) * V;
      correct += std::max_element(row, row + V) - row == target;
    }
  return correct;
}

template <typename T>
EvalResult evaluate_blocks(PerceiverAR<T>& model, const std::vector<std::string>& shards,
                           int64_t max_targets, const std::function<void(int64_t)>& progress) {
  const ModelConfig& c = model.config();
  const int64_t N = c.context_length, M = c.num_latents, W = N + 1;
  const int64_t batch = model.max_batch();
  std::vector<int32_t> windows(size_t(batch * W));
  EvalResult r;
  double ce_sum = 0;
  int64_t correct = 0;
  for (const std::string& path : shards) {
    const ShardReader reader(path);
    const int64_t S = reader.info().num_tokens;
    const int64_t blocks = S > 1 ? (S - 1 + M - 1) / M : 0;
    auto read = [&](int64_t begin, int64_t count, int32_t* out) {
      reader.read(begin, count, out, c.vocab_size);
    };
    for (int64_t b0 = 0; b0 < blocks; b0 += batch) {
      const int64_t nb = std::min(batch, blocks - b0);
      for (int64_t i = 0; i < nb; ++i)
        block_window(b0 + i, S, N, M, read, windows.data() + i * W);
      const LossSums s = model.forward(windows.data(), nb, ForwardContext{});
      correct += count_correct(model.logits(), windows.data(), nb, N, M, c.vocab_size);
      ce_sum += s.ce;
      r.tokens += s.valid;
      if (progress) progress(r.tokens);
      if (max_targets > 0 && r.tokens >= max_targets) break;
    }
    if (max_targets > 0 && r.tokens >= max_targets) break;
  }
  r.loss_nats = r.tokens > 0 ? ce_sum / double(r.tokens) : 0.0;
  r.accuracy = r.tokens > 0 ? double(correct) / double(r.tokens) : 0.0;
  return r;
}

template EvalResult evaluate_blocks<float>(PerceiverAR<float>&, const std::vector<std::string>&,
                                           int64_t, const std::function<void(int64_t)>&);
template EvalResult evaluate_blocks<double>(PerceiverAR<double>&,
                                            const std::vector<std::string>&, int64_t,
                                            const std::function<void(int64_t)>&);

}  // namespace par
