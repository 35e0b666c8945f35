// Window arithmetic over a list of shards (see dataset.h).
#include "data/dataset.h"

#include <sys/resource.h>

#include <algorithm>
#include <mutex>

#include "core/error.h"
#include "data/document_index.h"

namespace par {

// How many shards stay open at most: each holds a file descriptor and HDF5's chunk cache
// (1 to 8 MiB, shard.cpp), so a data set of thousands of small shards would otherwise run
// out of descriptors and hold memory that the memory plan does not count. Windows are read
// in a random order, so a shard not kept is opened again on most reads: keep as many as a
// quarter of the descriptors allows, 64 to 1,024.
int64_t max_open_shards() {
  struct rlimit files {};
  const int64_t quarter = getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY
                              ? int64_t(files.rlim_cur / 4)
                              : 1024;
  return std::clamp<int64_t>(quarter, 64, 1024);
}

struct Dataset::Readers {
  std::mutex mutex;  // guards opening and closing; reads serialize on the HDF5 lock
  std::vector<std::shared_ptr<const ShardReader>> open;
  std::vector<uint64_t> last_use;  // per shard, for closing the least recently used
  uint64_t uses = 0;
  int64_t num_open = 0;
  int64_t max_open = max_open_shards();
  std::vector<std::unique_ptr<DocumentIndex>> documents;
};

void check_vocabulary(const ShardInfo& s, int64_t vocab_size) {
  if (s.vocab_size > vocab_size)
    fail_user("shard ", s.path, " has vocab_size ", s.vocab_size, ", more than the model's ",
              vocab_size, "; use a model with --vocab-size at least ", s.vocab_size,
              " or the right data");
}

void check_stream_shards(const std::vector<std::string>& paths, int64_t vocab_size) {
  if (paths.empty()) fail_user("no shard files given (HDF5 files written by `par prep`)");
  for (const std::string& p : paths) check_vocabulary(inspect_shard(p), vocab_size);
}

Dataset::Dataset(std::vector<std::string> paths, int64_t context_length, int64_t vocab_size)
    : paths_(std::move(paths)),
      context_length_(context_length),
      vocab_size_(vocab_size),
      readers_(std::make_unique<Readers>()) {
  if (paths_.empty())
    fail_user("the data set has no shard files; give token shards (HDF5 files written by "
              "`par prep`, see spec/FORMATS.md)");
  if (context_length_ < 1) fail_user("--context-length must be positive, not ", context_length_);
  if (vocab_size_ < 1) fail_user("--vocab-size must be positive, not ", vocab_size_);
  const int64_t window_tokens = context_length_ + 1;
  window_begin_.push_back(0);
  for (const std::string& p : paths_) {
    ShardInfo s = inspect_shard(p);
    if (s.num_tokens < window_tokens)
      fail_user("shard ", p, " has ", s.num_tokens, " tokens, fewer than one window of N+1 = ",
                window_tokens, " tokens; use a shorter --context-length, or longer shards (par prep ",
                "--shard-tokens)");
    check_vocabulary(s, vocab_size_);
    // Shards without max_token (other writers) are checked window by window as they are
    // read; so are those with it, a compare per token that keeps a wrong attribute from
    // reaching the embedding.
    window_begin_.push_back(window_begin_.back() + (s.num_tokens - 1) / context_length_);
    shards_.push_back(std::move(s));
  }
  readers_->open.resize(shards_.size());
  readers_->last_use.resize(shards_.size());
  readers_->documents.resize(shards_.size());
}

int64_t Dataset::num_tokens() const {
  int64_t n = 0;
  for (const ShardInfo& s : shards_) n += s.num_tokens;
  return n;
}

int64_t Dataset::unread_tokens() const {
  return num_tokens() - num_windows() * context_length_ - num_shards();
}

Dataset::~Dataset() = default;
Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;

const ShardInfo& Dataset::shard(int64_t i) const {
  PAR_ASSERT(i >= 0 && i < num_shards(), "shard ", i, " of ", num_shards());
  return shards_[static_cast<size_t>(i)];
}

Dataset::WindowRef Dataset::window(int64_t w) const {
  PAR_ASSERT(w >= 0 && w < num_windows(), "window ", w, " of ", num_windows());
  // The last shard whose first window is <= w.
  const auto it = std::upper_bound(window_begin_.begin(), window_begin_.end(), w) - 1;
  const int64_t s = it - window_begin_.begin();
  return {s, (w - *it) * context_length_};
}

std::shared_ptr<const ShardReader> Dataset::reader(int64_t shard) const {
  Readers& rs = *readers_;
  std::lock_guard<std::mutex> lock(rs.mutex);
  const size_t i = static_cast<size_t>(shard);
  rs.last_use[i] = ++rs.uses;
  if (rs.open[i]) return rs.open[i];
  if (rs.num_open >= rs.max_open) {
    // Close the least recently used; a reader another thread still reads from closes when
    // that read is done.
    size_t lru = i;
    for (size_t k = 0; k < rs.open.size(); ++k)
      if (rs.open[k] && (lru == i || rs.last_use[k] < rs.last_use[lru])) lru = k;
    rs.open[lru].reset();
    --rs.num_open;
  }
  auto r = std::make_shared<const ShardReader>(paths_[i]);
  const ShardInfo& was = shards_[i];
  if (r->info().num_tokens != was.num_tokens || r->info().vocab_size != was.vocab_size)
    fail_user("shard ", was.path, " changed while in use (", was.num_tokens, " tokens, now ",
              r->info().num_tokens, "); do not rewrite shards during a run");
  rs.open[i] = r;
  ++rs.num_open;
  return r;
}

void Dataset::read_window(int64_t w, int64_t col_begin, int64_t col_end, int32_t* out) const {
  PAR_ASSERT(0 <= col_begin && col_begin < col_end && col_end <= context_length_ + 1,
             "columns [", col_begin, ", ", col_end, ") of a window of ", context_length_ + 1);
  const WindowRef ref = window(w);
  // The shard's vocab_size is at most the model's (checked above) and is the stricter bound.
  reader(ref.shard)->read(ref.offset + col_begin, col_end - col_begin, out,
                         std::min(vocab_size_, shards_[static_cast<size_t>(ref.shard)].vocab_size));
}

int64_t Dataset::position_carry(int64_t w, int64_t col) const {
  PAR_ASSERT(0 <= col && col <= context_length_, "column ", col);
  const WindowRef ref = window(w);
  const std::shared_ptr<const ShardReader> r = reader(ref.shard);
  std::lock_guard<std::mutex> lock(readers_->mutex);
  auto& index = readers_->documents[static_cast<size_t>(ref.shard)];
  if (!index)
    index = std::make_unique<DocumentIndex>(
        *r, std::min(vocab_size_, shards_[static_cast<size_t>(ref.shard)].vocab_size));
  return index->carry_before(ref.offset + col);
}

}  // namespace par
