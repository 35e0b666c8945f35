// A Communicator decorator that counts the payload each collective moves for this rank,
// for `par bench` (communication volume per step) and tests (messages independent of N).
// Payload: all_reduce and broadcast count their buffer, reduce_scatter its input,
// all_gather its output; the bytes a particular MPI algorithm puts on the wire differ by
// a small factor, not in how they grow.
#pragma once

#include <memory>

#include "core/communicator.h"

namespace par {

class CountingCommunicator final : public Communicator {
 public:
  explicit CountingCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }

  void all_reduce(const void* send, void* recv, int64_t count, DataType type,
                  ReduceOp op) override {
    add(count, type);
    inner_->all_reduce(send, recv, count, type, op);
  }
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DataType type,
                      ReduceOp op) override {
    add(recv_count * size(), type);
    inner_->reduce_scatter(send, recv, recv_count, type, op);
  }
  void all_gather(const void* send, void* recv, int64_t send_count, DataType type) override {
    add(send_count * size(), type);
    inner_->all_gather(send, recv, send_count, type);
  }
  void broadcast(void* buf, int64_t count, DataType type, int root) override {
    add(count, type);
    inner_->broadcast(buf, count, type, root);
  }
  void barrier() override { inner_->barrier(); }
  using Communicator::all_reduce;

  int64_t bytes() const { return bytes_; }
  int64_t calls() const { return calls_; }
  void reset() { bytes_ = calls_ = 0; }

 private:
  void add(int64_t count, DataType type) {
    // A group of one moves nothing.
    if (size() > 1) bytes_ += count * int64_t(size_of(type));
    ++calls_;
  }
  std::unique_ptr<Communicator> inner_;
  int64_t bytes_ = 0, calls_ = 0;
};

}  // namespace par
