// Token shards: one HDF5 file holding a 1-D token array (spec/FORMATS.md, "Token shards").
//
// inspect_shard validates a file against the public format with messages that tell a user
// with their own tooling what to fix; ShardReader reads token ranges (hyperslabs) without
// loading the shard; ShardWriter / write_shard produce shards that stream to disk and only
// appear under their final name once complete.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/h5.h"

namespace par {

inline constexpr const char* kShardFormat = "par-tokens-1";

struct ShardInfo {
  std::string path;
  int64_t num_tokens = 0;
  int64_t vocab_size = 0;  // the shard's own `vocab_size` attribute
  int64_t max_token = -1;  // its optional `max_token` attribute (-1: absent)
};

// Opens and validates a shard (format attribute, vocab_size, /tokens dataset: 1-D, of an
// accepted integer type; max_token, when present, below vocab_size). UserError naming the
// file, what is wrong and what to do.
ShardInfo inspect_shard(const std::string& path);

// Keeps the shard open for repeated range reads. Thread-compatible: reads from several
// threads are serialized by the HDF5 lock.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  const ShardInfo& info() const { return info_; }
  // Tokens [offset, offset+count) into out[count]. Each must lie in [0, vocab_limit), else a
  // UserError naming the shard, the position, the value and the vocabulary size.
  void read(int64_t offset, int64_t count, int32_t* out, int64_t vocab_limit) const;

 private:
  ShardInfo info_;
  h5::Object file_;
  h5::Object tokens_;
  bool unsigned32_ = false;  // uint32 storage: read as uint32 so large values report exactly
};

// Writes one shard of exactly `num_tokens` tokens, appended in pieces of any size. Data goes
// to `path + ".tmp"`; commit() renames it into place. Destroying an uncommitted writer
// removes the temporary file, so a failure never leaves a half-written shard behind.
class ShardWriter {
 public:
  ShardWriter(std::string path, int64_t num_tokens, int64_t vocab_size);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Tokens must lie in [0, vocab_size) (UserError naming the shard and position otherwise).
  // The largest becomes the `max_token` attribute (spec/FORMATS.md).
  void append(const int32_t* tokens, int64_t n);
  int64_t written() const { return written_; }
  // Flushes and closes the temporary file; it must hold exactly num_tokens tokens.
  void close();
  // close() if needed, then rename the temporary file to the final path.
  void commit();
  const std::string& path() const { return path_; }
  std::string tmp_path() const { return path_ + ".tmp"; }
  ShardInfo info() const { return {path_, num_tokens_, vocab_size_}; }

 private:
  void flush_chunk();

  std::string path_;
  int64_t num_tokens_;
  int64_t vocab_size_;
  int64_t chunk_tokens_;
  int64_t elem_bytes_;
  hid_t mem_type_;
  h5::Object file_;
  h5::Object tokens_;
  std::vector<uint8_t> chunk_;  // pending tokens in storage type, < one chunk
  int64_t pending_ = 0;         // tokens in chunk_
  int64_t written_ = 0;         // tokens appended (flushed or pending)
  int64_t max_token_ = -1;
  bool closed_ = false;
  bool committed_ = false;
};

// Tokens per HDF5 chunk of a shard written by par (1 Mi tokens, as spec/FORMATS.md says).
inline constexpr int64_t kShardChunkTokens = int64_t{1} << 20;

// The storage type write_shard picks: uint8 for vocab_size <= 256, uint16 <= 65536, else
// uint32.
int64_t shard_token_bytes(int64_t vocab_size);

// One-shot ShardWriter: validates tokens < vocab_size, chunked, gzip level 1 with shuffle,
// attributes `format` and `vocab_size`; tmp file then rename.
void write_shard(const std::string& path, const int32_t* tokens, int64_t n, int64_t vocab_size);

}  // namespace par
