// A Communicator decorator that counts the payload each collective moves for this rank,
// for `par bench` (communication volume per step) and tests (messages independent of N).
// Payload as core/communicator_decorator.h defines it; the bytes a particular MPI
// algorithm puts on the wire differ by a small factor, not in how they grow.
#pragma once

#include "core/communicator_decorator.h"

namespace par {

class CountingCommunicator final : public CommunicatorDecorator {
 public:
  using CommunicatorDecorator::CommunicatorDecorator;

  int64_t bytes() const { return bytes_; }
  int64_t calls() const { return calls_; }
  void reset() { bytes_ = calls_ = 0; }

 private:
  void begin(CollectiveOp op, int64_t count, DataType type) override {
    if (op == CollectiveOp::kBarrier) return;  // moves nothing, and was never counted
    // A group of one moves nothing.
    if (size() > 1) bytes_ += count * int64_t(size_of(type));
    ++calls_;
  }
  int64_t bytes_ = 0, calls_ = 0;
};

}  // namespace par
