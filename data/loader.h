// Streams training batches from a Dataset on a background thread.
//
// Global batch k holds global samples k*global_batch .. k*global_batch + global_batch - 1;
// each sample is a window chosen by window_of_sample(seed, sample, W). A rank reads only its
// data-parallel share of each batch (samples first .. first+count-1) and its sequence-parallel
// slice of each window (columns col_begin .. col_end-1). The loader's only state is the batch
// counter, so starting at batch k reproduces exactly what a run that got there would read.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "data/dataset.h"

namespace par {

struct LoaderOptions {
  int64_t global_batch = 1;  // samples per global batch
  int64_t first = 0;         // this rank reads samples [first, first+count) of each global batch
  int64_t count = 1;
  int64_t col_begin = 0;     // window columns to read; col_end -1 means N+1
  int64_t col_end = -1;
  uint64_t seed = 0;
  int64_t prefetch = 4;      // batches kept ready
  bool positions = false;    // also the carry of column col_begin (absolute positions)
};

struct Batch {
  int64_t index = 0;             // global batch number
  std::vector<int32_t> tokens;   // [count, col_end - col_begin], row-major
  std::vector<int64_t> samples;  // [count] global sample ids
  std::vector<int64_t> carry;    // [count] with LoaderOptions::positions (Dataset::position_carry)
};

class Loader {
 public:
  // `data` must outlive the loader. Reading starts at global batch start_batch.
  Loader(const Dataset& data, LoaderOptions opts, int64_t start_batch);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch in order; blocks until it is read. An error on the reading thread (a bad
  // token, an unreadable shard) is rethrown here, after the batches read before it.
  Batch next();
  // Index of the batch the next call to next() returns.
  int64_t next_batch_index() const;
  int64_t columns() const { return opts_.col_end - opts_.col_begin; }

  // Bytes of batches alive at once: up to `prefetch` queued, one being read, and `held`
  // that the caller keeps (options resolved: col_end given).
  static double memory_bytes(const LoaderOptions& opts, int64_t held);

  // The batch `index` read on the calling thread (what the background thread does).
  static Batch read_batch(const Dataset& data, const LoaderOptions& opts, int64_t index);

 private:
  void run();

  const Dataset& data_;
  LoaderOptions opts_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;  // a batch or an error arrived
  std::condition_variable space_;  // next() took a batch, or stop
  std::deque<Batch> queue_;
  std::exception_ptr error_;
  std::atomic<bool> stop_{false};  // also polled between samples, for a prompt exit
  int64_t next_index_;   // batch next() returns
  int64_t read_index_;   // batch the thread reads next
  std::thread thread_;
};

}  // namespace par
