// An in-process Communicator for tests: the "ranks" of a group are threads of this
// process, so parallel layouts can be checked inside the ordinary test binary (the MPI
// communicator has its own tests under mpirun). Every rank reduces all contributions in
// rank order, so results are identical on all ranks and from run to run.
#pragma once

#include <barrier>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "core/communicator.h"

namespace par::testing_util {

class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), barrier_(size), send_(size), recv_(size) {}
  int size() const { return size_; }

 private:
  friend class ThreadCommunicator;
  int size_;
  std::barrier<> barrier_;
  std::vector<const void*> send_;
  std::vector<void*> recv_;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& group, int rank) : g_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size_; }

  void all_reduce(const void* send, void* recv, int64_t count, DataType type,
                  ReduceOp op) override {
    std::vector<char> out(size_t(count) * size_of(type));
    exchange(send, [&] { reduce_into(out.data(), 0, count, type, op); });
    std::memcpy(recv, out.data(), out.size());
    g_.barrier_.arrive_and_wait();
  }
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DataType type,
                      ReduceOp op) override {
    std::vector<char> out(size_t(recv_count) * size_of(type));
    exchange(send, [&] { reduce_into(out.data(), rank_ * recv_count, recv_count, type, op); });
    std::memcpy(recv, out.data(), out.size());
    g_.barrier_.arrive_and_wait();
  }
  void all_gather(const void* send, void* recv, int64_t send_count, DataType type) override {
    const size_t bytes = size_t(send_count) * size_of(type);
    std::vector<char> out(bytes * size_t(g_.size_));
    exchange(send, [&] {
      for (int r = 0; r < g_.size_; ++r)
        std::memcpy(out.data() + bytes * size_t(r), g_.send_[size_t(r)], bytes);
    });
    std::memcpy(recv, out.data(), out.size());
    g_.barrier_.arrive_and_wait();
  }
  void broadcast(void* buf, int64_t count, DataType type, int root) override {
    const size_t bytes = size_t(count) * size_of(type);
    std::vector<char> out(bytes);
    exchange(buf, [&] { std::memcpy(out.data(), g_.send_[size_t(root)], bytes); });
    std::memcpy(buf, out.data(), bytes);
    g_.barrier_.arrive_and_wait();
  }
  void barrier() override { g_.barrier_.arrive_and_wait(); }

 private:
  // Publishes `send`, waits for everyone, runs `read` (which reads all ranks' buffers),
  // and waits again so no buffer changes while another rank still reads it.
  template <typename F>
  void exchange(const void* send, F&& read) {
    g_.send_[size_t(rank_)] = send;
    g_.barrier_.arrive_and_wait();
    read();
    g_.barrier_.arrive_and_wait();
  }

  void reduce_into(char* out, int64_t first, int64_t count, DataType type, ReduceOp op) {
    switch (type) {
      case DataType::kFloat32: reduce<float>(out, first, count, op); break;
      case DataType::kFloat64: reduce<double>(out, first, count, op); break;
      case DataType::kInt64: reduce<int64_t>(out, first, count, op); break;
      case DataType::kUInt8: reduce<uint8_t>(out, first, count, op); break;
    }
  }
  template <typename V>
  void reduce(char* out_bytes, int64_t first, int64_t count, ReduceOp op) {
    V* out = reinterpret_cast<V*>(out_bytes);
    const V* r0 = static_cast<const V*>(g_.send_[0]) + first;
    for (int64_t i = 0; i < count; ++i) out[i] = r0[i];
    for (int r = 1; r < g_.size_; ++r) {
      const V* x = static_cast<const V*>(g_.send_[size_t(r)]) + first;
      for (int64_t i = 0; i < count; ++i)
        out[i] = op == ReduceOp::kSum ? V(out[i] + x[i]) : (x[i] > out[i] ? x[i] : out[i]);
    }
  }

  ThreadGroup& g_;
  int rank_;
};

// Runs body(rank) on `n` threads and waits for all of them.
inline void run_ranks(int n, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
}

}  // namespace par::testing_util
