// `par prep`: turn raw data into token shards (spec/FORMATS.md).
//
// Three sources: files of bytes (one document each), an existing 1-D token array (HDF5 or raw
// little-endian binary), and the synthetic mirror-copy task of the Perceiver AR paper. Every
// mode streams its input (memory stays at about one HDF5 chunk), splits the token stream into
// train-NNNNN.h5 and val-NNNNN.h5 shards, and makes shards appear under their final names
// only once all of them are complete, so a failure never leaves a partial data set.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "core/constants.h"
#include "data/shard.h"

namespace par {

struct PrepCommon {
  std::string out_dir;
  int64_t shard_tokens = int64_t{1} << 28;  // at most this many tokens per shard
  bool force = false;                       // overwrite existing shards in out_dir
};

struct PrepResult {
  std::vector<ShardInfo> train;
  std::vector<ShardInfo> val;
};

struct BytesPrepOptions {
  PrepCommon common;
  std::vector<std::string> inputs;  // one document per file
  double val_fraction = 0.01;       // the last fraction of the token stream is validation data
};
PrepResult prep_bytes(const BytesPrepOptions& opts, std::ostream& log);

struct TokensPrepOptions {
  PrepCommon common;
  std::string input;
  int64_t vocab_size = 0;
  std::string dataset;  // HDF5 dataset name; "" = "tokens" (and input may be raw)
  std::string dtype;    // raw input element type: uint8 uint16 int32 uint32 int64
  double val_fraction = 0.01;
};
PrepResult prep_tokens(const TokensPrepOptions& opts, std::ostream& log);

struct MirrorPrepOptions {
  PrepCommon common;
  int64_t length = 0;         // E: tokens per example
  int64_t examples = 0;       // K training examples
  int64_t val_examples = -1;  // K2; -1 = max(1, K/10)
  uint64_t seed = 0;
  // true: the second half is the first reversed (the paper's mirror task); false: the
  // first half repeated in order (the copy task).
  bool reverse = true;
  // -1: whole examples. K >= 1: only the last K tokens of the second half and the random
  // tokens they repeat are kept, every other position of the first two halves is PAD: the
  // same distances back, but only 2K inputs to attend to (a warm-up for long contexts).
  int64_t keep = -1;
  // -1: (E-1)/2. The random tokens of the first half (and so the distance back of a copy);
  // 2 * half <= E, the rest of the example is EOS (none when 2 * half == E).
  int64_t half = -1;
};
PrepResult prep_mirror(const MirrorPrepOptions& opts, std::ostream& log);

}  // namespace par
