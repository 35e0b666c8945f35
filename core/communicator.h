// The parallel interface: collectives over one group of ranks. core/ talks to groups only
// through this; parallel/ implements it over MPI (host memory) and NCCL (device memory).
// A Communicator of size 1 (SelfCommunicator) makes every collective a copy or a no-op, so
// the single-process path runs the same code as a distributed one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace par {

enum class DataType { kFloat32, kFloat64, kInt64, kUInt8 };
enum class ReduceOp { kSum, kMax };

inline size_t size_of(DataType t) {
  switch (t) {
    case DataType::kFloat32: return 4;
    case DataType::kFloat64: return 8;
    case DataType::kInt64: return 8;
    case DataType::kUInt8: return 1;
  }
  return 0;
}

template <typename T>
constexpr DataType data_type_of() {
  if constexpr (std::is_same_v<T, float>) return DataType::kFloat32;
  else if constexpr (std::is_same_v<T, double>) return DataType::kFloat64;
  else if constexpr (std::is_same_v<T, int64_t>) return DataType::kInt64;
  else {
    static_assert(std::is_same_v<T, uint8_t>, "unsupported collective type");
    return DataType::kUInt8;
  }
}

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // send == recv means in place. Counts are elements.
  virtual void all_reduce(const void* send, void* recv, int64_t count, DataType type,
                          ReduceOp op) = 0;
  // Rank r receives the reduction of elements [r*recv_count, (r+1)*recv_count).
  virtual void reduce_scatter(const void* send, void* recv, int64_t recv_count,
                              DataType type, ReduceOp op) = 0;
  // recv holds size()*send_count elements, rank r's at [r*send_count, ...).
  virtual void all_gather(const void* send, void* recv, int64_t send_count,
                          DataType type) = 0;
  virtual void broadcast(void* buf, int64_t count, DataType type, int root) = 0;
  virtual void barrier() = 0;

  template <typename T>
  void all_reduce(T* buf, int64_t count, ReduceOp op = ReduceOp::kSum) {
    all_reduce(buf, buf, count, data_type_of<T>(), op);
  }
  template <typename T>
  T all_reduce_value(T value, ReduceOp op = ReduceOp::kSum) {
    all_reduce(&value, 1, op);
    return value;
  }
};

// The group of one: this process alone.
class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce(const void* send, void* recv, int64_t count, DataType type,
                  ReduceOp) override {
    if (send != recv) std::memmove(recv, send, size_t(count) * size_of(type));
  }
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DataType type,
                      ReduceOp) override {
    if (send != recv) std::memmove(recv, send, size_t(recv_count) * size_of(type));
  }
  void all_gather(const void* send, void* recv, int64_t send_count, DataType type) override {
    if (send != recv) std::memmove(recv, send, size_t(send_count) * size_of(type));
  }
  void broadcast(void*, int64_t, DataType, int) override {}
  void barrier() override {}
};

}  // namespace par
