// A Communicator for device buffers over a host one, for tests: each collective waits for
// the backend's stream, copies its buffers to the host, runs the host collective and copies
// the result back. Slow and simple: it lets the layout tests run ranks that are threads
// with their own CUDA backends on one GPU (NCCL does not put two ranks on one device).
#pragma once

#include <vector>

#include "core/communicator.h"
#include "core/ops.h"

namespace par::cuda_test {

class StagingCommunicator final : public Communicator {
 public:
  StagingCommunicator(Communicator& host, Ops<float>& ops) : host_(host), ops_(ops) {}
  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }

  void all_reduce(const void* send, void* recv, int64_t count, DataType type,
                  ReduceOp op) override {
    std::vector<char> in = down(send, count, type), out(in.size());
    host_.all_reduce(in.data(), out.data(), count, type, op);
    up(recv, out);
  }
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DataType type,
                      ReduceOp op) override {
    std::vector<char> in = down(send, recv_count * size(), type);
    std::vector<char> out(size_t(recv_count) * size_of(type));
    host_.reduce_scatter(in.data(), out.data(), recv_count, type, op);
    up(recv, out);
  }
  void all_gather(const void* send, void* recv, int64_t send_count, DataType type) override {
    std::vector<char> in = down(send, send_count, type);
    std::vector<char> out(in.size() * size_t(size()));
    host_.all_gather(in.data(), out.data(), send_count, type);
    up(recv, out);
  }
  void broadcast(void* buf, int64_t count, DataType type, int root) override {
    std::vector<char> b = down(buf, count, type);
    host_.broadcast(b.data(), count, type, root);
    up(buf, b);
  }
  void barrier() override { host_.barrier(); }

 private:
  std::vector<char> down(const void* p, int64_t count, DataType type) {
    std::vector<char> h(size_t(count) * size_of(type));
    ops_.download(h.data(), p, h.size());  // waits for the stream's work on p
    return h;
  }
  void up(void* p, const std::vector<char>& h) { ops_.upload(p, h.data(), h.size()); }

  Communicator& host_;
  Ops<float>& ops_;
};

}  // namespace par::cuda_test
