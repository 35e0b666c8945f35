// The reset index of a shard (see document_index.h).
#include "data/document_index.h"

#include <algorithm>

#include "core/absolute_positions.h"

namespace par {

DocumentIndex::DocumentIndex(const ShardReader& reader, int64_t vocab_limit) {
  constexpr int64_t kBlock = int64_t(1) << 20;
  const int64_t n = reader.info().num_tokens;
  std::vector<int32_t> block(size_t(std::min(n, kBlock)));
  for (int64_t off = 0; off < n; off += kBlock) {
    const int64_t count = std::min(kBlock, n - off);
    reader.read(off, count, block.data(), vocab_limit);
    for (int64_t i = 0; i < count; ++i) {
      const int32_t t = block[size_t(i)];
      if (t == kEosToken || t == kPadToken) resets_.push_back(off + i);
      if (t == kPadToken) pads_.push_back(off + i);
    }
  }
}

int64_t DocumentIndex::carry_before(int64_t i) const {
  // The last reset before i (or -1): tokens after it count 1, 2, ..., so token i - 1 is at
  // position i - 1 - reset (0 when the reset is token i - 1 itself).
  const auto it = std::lower_bound(resets_.begin(), resets_.end(), i);
  const int64_t reset = it == resets_.begin() ? -1 : *(it - 1);
  return i - 1 - reset;
}

bool DocumentIndex::is_pad(int64_t i) const {
  return std::binary_search(pads_.begin(), pads_.end(), i);
}

}  // namespace par
