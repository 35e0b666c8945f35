#include "train/evaluate.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/absolute_positions.h"
#include "core/error.h"
#include "data/document_index.h"
#include "data/shard.h"

namespace par {

double EvalResult::bits_per_token() const { return loss_nats / std::log(2.0); }

ScoredPositions parse_scored_positions(const std::string& given, const std::string& option) {
  ScoredPositions r;
  // Spaces around each number are allowed; inside one, not: "1 0" is no 10.
  const auto whole_number = [](const std::string& part) {
    const size_t begin = part.find_first_not_of(" \t"), end = part.find_last_not_of(" \t");
    if (begin == std::string::npos) throw std::invalid_argument("empty");
    const std::string digits = part.substr(begin, end - begin + 1);
    size_t used = 0;
    const int64_t n = std::stoll(digits, &used);
    if (used != digits.size()) throw std::invalid_argument("junk");
    return n;
  };
  const auto colon = given.find(':');
  try {
    if (colon == std::string::npos) throw std::invalid_argument("no colon");
    r.first = whole_number(given.substr(0, colon));
    r.last = whole_number(given.substr(colon + 1));
  } catch (const std::exception&) {
    fail_user(option, " '", given, "' is not FIRST:LAST (two whole numbers)");
  }
  if (r.first < 1 || r.last < r.first)
    fail_user(option, " ", given, ": need 1 <= FIRST <= LAST (positions are 1-based)");
  return r;
}

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

// The sums of one batch of blocks: ce, targets and correct predictions, over the targets
// (window columns N-M+1 .. N, [batch, M]) that are not PAD and that `scored` keeps.
template <typename T>
void add_block_sums(const PerceiverAR<T>& model, int64_t batch, const std::vector<uint8_t>& scored,
                    double sums[3]) {
  const int64_t M = model.config().num_latents, V = model.config().vocab_size;
  const std::vector<T> logits = model.logits(), ce = model.ce();
  const std::vector<int32_t>& targets = model.targets();
  double batch_sums[3] = {0, 0, 0};
  for (int64_t r = 0; r < batch * M; ++r) {
    if (targets[size_t(r)] == kPadToken || (!scored.empty() && !scored[size_t(r)])) continue;
    const T* row = logits.data() + r * V;
    batch_sums[0] += double(ce[size_t(r)]);
    batch_sums[1] += 1;
    batch_sums[2] += double(std::max_element(row, row + V) - row == targets[size_t(r)]);
  }
  for (int k = 0; k < 3; ++k) sums[k] += batch_sums[k];
}

}  // namespace

template <typename T>
EvalResult evaluate_blocks(PerceiverAR<T>& model, const std::vector<std::string>& shards,
                           int64_t max_targets, const std::function<void(int64_t)>& progress,
                           const ProcessGrid* grid, const ScoredPositions& only) {
  const ModelConfig& c = model.config();
  const int64_t N = c.context_length, M = c.num_latents;
  const int64_t c0 = model.window_begin(), cols = model.window_columns();
  const int64_t batch = model.max_batch();
  const int dp = grid ? grid->shape().dp : 1, replica = grid ? grid->dp_rank() : 0;
  const bool counts = model.holds_latents() && (!grid || grid->tp_rank() == 0);
  const bool positions = c.absolute_positions() || !only.all();
  // The budget: with every target scored, ceil(max_targets / M) blocks; with some, blocks
  // until their scored targets reach max_targets (counted from the document index, the
  // same on every rank, other replicas' blocks included, so that all stop together).
  const bool by_blocks = max_targets <= 0 || only.all();
  const int64_t budget = max_targets > 0 && by_blocks ? max_targets / M + (max_targets % M != 0)
                                                     : std::numeric_limits<int64_t>::max();
  int64_t targets_counted = 0;
  auto spent = [&] { return !by_blocks && targets_counted >= max_targets; };
  std::vector<int32_t> windows(static_cast<size_t>(batch * cols)), pos(static_cast<size_t>(cols));
  std::vector<int64_t> carry(static_cast<size_t>(batch));
  std::vector<uint8_t> scored(only.all() ? 0 : size_t(batch * M));
  double sums[3] = {0, 0, 0};  // ce, targets, correct
  int64_t blocks_done = 0, batch_index = 0;
  for (const std::string& path : shards) {
    const ShardReader reader(path);
    const int64_t S = reader.info().num_tokens;
    const int64_t blocks = S > 1 ? (S - 1 + M - 1) / M : 0;
    // The shard's own vocabulary is the stricter bound (as training reads it).
    const int64_t vocab = std::min(c.vocab_size, reader.info().vocab_size);
    auto read = [&](int64_t begin, int64_t count, int32_t* out) {
      reader.read(begin, count, out, vocab);
    };
    std::unique_ptr<DocumentIndex> documents;
    if (positions && blocks > 0) documents = std::make_unique<DocumentIndex>(reader, vocab);
    // The targets of block `blk` (stream indices blk*M + 1 .. blk*M + M) that `only` scores:
    // not PAD, at a document position (the carry before it plus 1) in range.
    auto scored_in_block = [&](int64_t blk) {
      int64_t n = 0;
      for (int64_t x = blk * M + 1; x <= blk * M + M && x < S; ++x) {
        const int64_t p = documents->carry_before(x) + 1;
        n += only.holds(p) && !documents->is_pad(x);
      }
      return n;
    };
    for (int64_t b0 = 0; b0 < blocks && blocks_done < budget && !spent(); b0 += batch) {
      int64_t nb = std::min({batch, blocks - b0, budget - blocks_done});
      if (!by_blocks) {
        int64_t take = 0;
        while (take < nb && !spent()) targets_counted += scored_in_block(b0 + take++);
        nb = take;
      }
      blocks_done += nb;
      if (batch_index++ % dp != replica) continue;  // another replica's turn
      for (int64_t i = 0; i < nb; ++i) {
        int32_t* w = windows.data() + i * cols;
        block_window(b0 + i, S, N, M, c0, cols, read, w);
        if (!positions) continue;
        // Column c0 is stream index `first`; before the stream (left padding) it is a PAD.
        const int64_t first = (b0 + i) * M - (N - M) + c0;
        carry[size_t(i)] = first > 0 && first < S ? documents->carry_before(first) : 0;
        if (scored.empty() || !counts) continue;
        document_positions(w, cols, carry[size_t(i)], pos.data());
        for (int64_t t = 0; t < M; ++t) {  // target t is column N-M+1+t
          const int32_t p = pos[size_t(N - M + 1 + t - c0)];
          scored[size_t(i * M + t)] = only.holds(p);
        }
      }
      ForwardContext ctx;
      ctx.position_carry = positions ? carry.data() : nullptr;
      model.forward(windows.data(), nb, ctx);
      if (!counts) continue;
      add_block_sums(model, nb, scored, sums);
      if (progress) progress(int64_t(sums[1]));
    }
  }
  if (grid) grid->world()->all_reduce(sums, 3, ReduceOp::kSum);
  EvalResult r;
  r.tokens = int64_t(sums[1]);
  r.loss_nats = r.tokens > 0 ? sums[0] / sums[1] : 0.0;
  r.accuracy = r.tokens > 0 ? sums[2] / sums[1] : 0.0;
  return r;
}

template EvalResult evaluate_blocks<float>(PerceiverAR<float>&, const std::vector<std::string>&,
                                           int64_t, const std::function<void(int64_t)>&,
                                           const ProcessGrid*, const ScoredPositions&);
template EvalResult evaluate_blocks<double>(PerceiverAR<double>&,
                                            const std::vector<std::string>&, int64_t,
                                            const std::function<void(int64_t)>&,
                                            const ProcessGrid*, const ScoredPositions&);

}  // namespace par
