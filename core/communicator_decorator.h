// A Communicator that hands every collective on to another one and lets a subclass see
// each go by: what it is and the payload it moves for this rank (all_reduce and broadcast
// their buffer, reduce_scatter its input, all_gather its output; a barrier nothing), from
// its start (begin) to its end (end). CountingCommunicator counts the traffic with it,
// launch/collective_watch.h times the waits.
#pragma once

#include <memory>

#include "core/communicator.h"

namespace par {

enum class CollectiveOp { kAllReduce, kReduceScatter, kAllGather, kBroadcast, kBarrier };

inline const char* collective_name(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kAllReduce: return "all_reduce";
    case CollectiveOp::kReduceScatter: return "reduce_scatter";
    case CollectiveOp::kAllGather: return "all_gather";
    case CollectiveOp::kBroadcast: return "broadcast";
    case CollectiveOp::kBarrier: return "barrier";
  }
  return "?";
}

class CommunicatorDecorator : public Communicator {
 public:
  explicit CommunicatorDecorator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const final { return inner_->rank(); }
  int size() const final { return inner_->size(); }

  void all_reduce(const void* send, void* recv, int64_t count, DataType type,
                  ReduceOp op) final {
    Seen s(*this, CollectiveOp::kAllReduce, count, type);
    inner_->all_reduce(send, recv, count, type, op);
  }
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DataType type,
                      ReduceOp op) final {
    Seen s(*this, CollectiveOp::kReduceScatter, recv_count * size(), type);
    inner_->reduce_scatter(send, recv, recv_count, type, op);
  }
  void all_gather(const void* send, void* recv, int64_t send_count, DataType type) final {
    Seen s(*this, CollectiveOp::kAllGather, send_count * size(), type);
    inner_->all_gather(send, recv, send_count, type);
  }
  void broadcast(void* buf, int64_t count, DataType type, int root) final {
    Seen s(*this, CollectiveOp::kBroadcast, count, type);
    inner_->broadcast(buf, count, type, root);
  }
  void barrier() final {
    Seen s(*this, CollectiveOp::kBarrier, 0, DataType::kUInt8);
    inner_->barrier();
  }
  using Communicator::all_reduce;

 protected:
  // count: payload elements of `type`.
  virtual void begin(CollectiveOp op, int64_t count, DataType type) = 0;
  virtual void end() {}

 private:
  struct Seen {
    CommunicatorDecorator& c;
    Seen(CommunicatorDecorator& d, CollectiveOp op, int64_t count, DataType type) : c(d) {
      c.begin(op, count, type);
    }
    ~Seen() { c.end(); }
  };
  std::unique_ptr<Communicator> inner_;
};

}  // namespace par
