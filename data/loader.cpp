// Background batch reading (see loader.h).
#include "data/loader.h"

#include "core/error.h"
#include "data/sample_order.h"

namespace par {

namespace {

// Returns false when stopped part-way (the batch is then incomplete).
bool fill_batch(const Dataset& data, const LoaderOptions& opts, int64_t index, Batch& b,
                const std::atomic<bool>* stop) {
  const int64_t width = opts.col_end - opts.col_begin;
  b.index = index;
  b.tokens.resize(static_cast<size_t>(opts.count * width));
  b.samples.resize(static_cast<size_t>(opts.count));
  b.carry.resize(opts.positions ? static_cast<size_t>(opts.count) : 0);
  for (int64_t i = 0; i < opts.count; ++i) {
    if (stop && stop->load(std::memory_order_relaxed)) return false;
    const int64_t sample = index * opts.global_batch + opts.first + i;
    b.samples[static_cast<size_t>(i)] = sample;
    const int64_t w = window_of_sample(opts.seed, sample, data.num_windows());
    data.read_window(w, opts.col_begin, opts.col_end, b.tokens.data() + i * width);
    if (opts.positions) b.carry[static_cast<size_t>(i)] = data.position_carry(w, opts.col_begin);
  }
  return true;
}

LoaderOptions resolved(const Dataset& data, LoaderOptions o) {
  if (o.col_end < 0) o.col_end = data.context_length() + 1;
  PAR_ASSERT(o.global_batch >= 1 && o.first >= 0 && o.count >= 1 &&
                 o.first + o.count <= o.global_batch,
             "loader share [", o.first, ", ", o.first + o.count, ") of a global batch of ",
             o.global_batch);
  PAR_ASSERT(0 <= o.col_begin && o.col_begin < o.col_end &&
                 o.col_end <= data.context_length() + 1,
             "loader columns [", o.col_begin, ", ", o.col_end, ")");
  PAR_ASSERT(o.prefetch >= 1, "prefetch ", o.prefetch);
  return o;
}

}  // namespace

Loader::Loader(const Dataset& data, LoaderOptions opts, int64_t start_batch)
    : data_(data),
      opts_(resolved(data, opts)),
      next_index_(start_batch),
      read_index_(start_batch) {
  PAR_ASSERT(start_batch >= 0, "start batch ", start_batch);
  thread_ = std::thread([this] { run(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  space_.notify_all();
  thread_.join();
}

double Loader::memory_bytes(const LoaderOptions& opts, int64_t held) {
  // The arrays fill_batch sizes.
  const double batch = double(opts.count) * double(opts.col_end - opts.col_begin) *
                           double(sizeof(int32_t)) +
                       double(opts.count) * double(sizeof(int64_t));
  return double(opts.prefetch + 1 + held) * batch;
}

Batch Loader::read_batch(const Dataset& data, const LoaderOptions& opts, int64_t index) {
  const LoaderOptions o = resolved(data, opts);
  Batch b;
  fill_batch(data, o, index, b, nullptr);
  return b;
}

void Loader::run() {
  try {
    for (;;) {
      int64_t index;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        space_.wait(lock, [&] {
          return stop_ || static_cast<int64_t>(queue_.size()) < opts_.prefetch;
        });
        if (stop_) return;
        index = read_index_;
      }
      Batch b;
      if (!fill_batch(data_, opts_, index, b, &stop_)) return;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(std::move(b));
        ++read_index_;
      }
      ready_.notify_one();
    }
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      error_ = std::current_exception();
    }
    ready_.notify_all();
  }
}

Batch Loader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  Batch b = std::move(queue_.front());
  queue_.pop_front();
  ++next_index_;
  lock.unlock();
  space_.notify_one();
  return b;
}

int64_t Loader::next_batch_index() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return next_index_;
}

}  // namespace par
