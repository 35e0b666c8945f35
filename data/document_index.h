// Where the documents of a token shard begin, for absolute positions (spec/MODEL.md
// section 13): a shard starts with a document, and EOS ends one. The index holds the
// places of every EOS and PAD token (after either, positions count from 1 again), so the
// document position just before any index of the shard is one binary search away, however
// long the documents are.
#pragma once

#include <cstdint>
#include <vector>

#include "data/shard.h"

namespace par {

class DocumentIndex {
 public:
  // Reads the whole shard once, in blocks (tokens checked against vocab_limit).
  DocumentIndex(const ShardReader& reader, int64_t vocab_limit);

  // The carry of stream index i (core/absolute_positions.h): the document position of token
  // i - 1, or 0 when i == 0 or token i - 1 is an EOS or a PAD.
  int64_t carry_before(int64_t i) const;
  // Whether token i is a PAD (which no evaluation scores).
  bool is_pad(int64_t i) const;

 private:
  std::vector<int64_t> resets_;  // indices of the EOS and PAD tokens, ascending
  std::vector<int64_t> pads_;    // indices of the PAD tokens, ascending
};

}  // namespace par
