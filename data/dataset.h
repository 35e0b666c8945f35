// A data set: an ordered list of token shards cut into training windows.
//
// A window is N+1 consecutive tokens (N = context length): N inputs and their N next-token
// targets. Windows start every N tokens, so neighbours share one token and every token is a
// target once per epoch; a shard of T tokens holds floor((T-1)/N) windows and no window spans
// two shards. Window ids run shard by shard in the order the paths were given.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/shard.h"

namespace par {

// A shard of `s`'s vocabulary read by a model of `vocab_size`: UserError naming it when the
// shard's is larger.
void check_vocabulary(const ShardInfo& s, int64_t vocab_size);
// The checks Dataset makes of each shard, less the length of a window: block evaluation
// (train/evaluate.h) reads streams of any length, padding what a block lacks.
void check_stream_shards(const std::vector<std::string>& paths, int64_t vocab_size);

class Dataset {
 public:
  // Inspects every shard up front, so a bad file fails before training starts (UserError
  // naming it): no paths, an invalid shard, a shard shorter than one window, or a shard whose
  // vocab_size exceeds the model's.
  Dataset(std::vector<std::string> paths, int64_t context_length, int64_t vocab_size);
  ~Dataset();
  Dataset(Dataset&&) noexcept;
  Dataset& operator=(Dataset&&) noexcept;

  int64_t num_windows() const { return window_begin_.back(); }
  int64_t num_shards() const { return static_cast<int64_t>(shards_.size()); }
  int64_t context_length() const { return context_length_; }
  int64_t vocab_size() const { return vocab_size_; }
  const ShardInfo& shard(int64_t i) const;
  const std::vector<std::string>& paths() const { return paths_; }
  // Tokens in all shards, and those in no window, never read: each shard's tail after its
  // last whole window (windows do not cross shards), (T - 1) mod N of a shard of T.
  int64_t num_tokens() const;
  int64_t unread_tokens() const;

  struct WindowRef {
    int64_t shard;
    int64_t offset;  // first token of the window inside the shard
  };
  WindowRef window(int64_t w) const;

  // Columns [col_begin, col_end) of window w into out[col_end - col_begin], with
  // 0 <= col_begin < col_end <= N+1. Tokens are checked against the vocabulary (UserError
  // naming shard, position and value). Safe to call from several threads.
  void read_window(int64_t w, int64_t col_begin, int64_t col_end, int32_t* out) const;

  // For absolute positions: the carry of column `col` of window w (core/absolute_positions.h),
  // the document position of the token before it in its shard. The first call for a shard
  // reads it whole to index its documents (data/document_index.h). Thread-safe.
  int64_t position_carry(int64_t w, int64_t col) const;

 private:
  struct Readers;  // lazily opened ShardReaders, a bounded number at once (and document
                   // indexes, one per shard)
  std::shared_ptr<const ShardReader> reader(int64_t shard) const;

  std::vector<std::string> paths_;
  int64_t context_length_;
  int64_t vocab_size_;
  std::vector<ShardInfo> shards_;
  std::vector<int64_t> window_begin_;  // [num_shards+1]: first window id of each shard
  std::unique_ptr<Readers> readers_;
};

}  // namespace par
