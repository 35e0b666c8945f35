// See nccl_communicator.h for the stream ordering, host staging and in-place forms.
#include "kernels/cuda/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_wait.h"

namespace par {

namespace {

static_assert(NCCL_UNIQUE_ID_BYTES == sizeof(NcclId::bytes), "NcclId must hold an ncclUniqueId");

ncclDataType_t nccl_type(DataType t) {
  switch (t) {
    case DataType::kFloat32: return ncclFloat32;
    case DataType::kFloat64: return ncclFloat64;
    case DataType::kInt64: return ncclInt64;
    case DataType::kUInt8: return ncclUint8;
  }
  PAR_ASSERT(false, "unknown DataType");
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kSum ? ncclSum : ncclMax; }

bool overlaps(const std::byte* a, int64_t a_bytes, const std::byte* b, int64_t b_bytes) {
  return a < b + b_bytes && b < a + a_bytes;
}

[[noreturn]] void fail_nccl(ncclResult_t r, ncclComm_t comm, const char* call, int rank,
                            int size, const char* file, int line) {
  const char* detail = ncclGetLastError(comm);
  const char* base = std::strrchr(file, '/');
  throw std::runtime_error(cat(base ? base + 1 : file, ":", line, ": ", call,
                               " failed on group rank ", rank, " of ", size, " (",
                               cuda::where(), "): ", ncclGetErrorString(r),
                               detail && *detail ? cat(": ", detail) : std::string()));
}

#define PAR_NCCL_CHECK(call)                                                          \
  do {                                                                                \
    const ncclResult_t par_r_ = (call);                                               \
    if (par_r_ != ncclSuccess) fail_nccl(par_r_, comm_, #call, rank_, size_, __FILE__, __LINE__); \
  } while (0)

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const NcclId& id, int rank, int size, cudaStream_t compute)
      : rank_(rank), size_(size), compute_(compute) {
    PAR_ASSERT(size >= 1 && rank >= 0 && rank < size, "NCCL rank ", rank, " of ", size);
    PAR_ASSERT(compute != nullptr, "the NCCL communicator needs the backend's stream");
    PAR_CUDA_CHECK(cudaGetDevice(&device_));
    try {
      int least = 0, greatest = 0;
      PAR_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
      // Communication first: other ranks wait on it, local compute does not.
      PAR_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
      PAR_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
      PAR_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
      ncclUniqueId uid;
      std::memcpy(&uid, id.bytes.data(), sizeof uid);
      PAR_NCCL_CHECK(ncclCommInitRank(&comm_, size, uid, rank));
      // Waits for the GPU poll this communicator for a failure, and abort it on one or on a
      // timeout (device_wait.h): a blocking wait would never end behind a dead peer.
      watch_ = cuda::add_wait_watch(cuda::WaitWatch{[this] { return async_failure(); },
                                                    [this] { abort(); }});
    } catch (...) {
      release();
      throw;
    }
  }

  ~NcclCommunicator() override { release(); }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce(const void* send, void* recv, int64_t count, DataType type,
                  ReduceOp op) override {
    PAR_ASSERT(count >= 0, "all_reduce: negative count ", count);
    if (count == 0) return;
    const int64_t bytes = count * int64_t(size_of(type));
    auto* s = static_cast<const std::byte*>(send);
    auto* r = static_cast<std::byte*>(recv);
    PAR_ASSERT(s == r || !overlaps(s, bytes, r, bytes), "all_reduce: send and recv partially overlap");
    PAR_CUDA_CHECK(cudaSetDevice(device_));
    begin();
    if (on_device(s) && on_device(r)) {
      PAR_NCCL_CHECK(ncclAllReduce(s, r, size_t(count), nccl_type(type), nccl_op(op), comm_, stream_));
      end();
      return;
    }
    std::byte* buf = staging(bytes);
    copy(buf, s, bytes);
    PAR_NCCL_CHECK(ncclAllReduce(buf, buf, size_t(count), nccl_type(type), nccl_op(op), comm_, stream_));
    copy(r, buf, bytes);
    finish_staged();
  }

  void reduce_scatter(const void* send, void* recv, int64_t recv_count, DataType type,
                      ReduceOp op) override {
    PAR_ASSERT(recv_count >= 0, "reduce_scatter: negative count ", recv_count);
    if (recv_count == 0) return;
    const int64_t es = int64_t(size_of(type)), rb = recv_count * es;
    auto* s = static_cast<const std::byte*>(send);
    auto* r = static_cast<std::byte*>(recv);
    const std::byte* mine = s + rank_ * rb;
    PAR_ASSERT(r == s || r == mine || !overlaps(s, rb * size_, r, rb),
               "reduce_scatter: send and recv overlap other than in place");
    PAR_CUDA_CHECK(cudaSetDevice(device_));
    begin();
    if (on_device(s) && on_device(r)) {
      if (r == s && rank_ != 0) {
        // MPI's in-place form: reduce into this rank's block (NCCL's in-place form), then
        // move it to the front (disjoint: the block starts at rank * recv_count >= count).
        std::byte* block = const_cast<std::byte*>(mine);
        PAR_NCCL_CHECK(ncclReduceScatter(s, block, size_t(recv_count), nccl_type(type),
                                         nccl_op(op), comm_, stream_));
        PAR_CUDA_CHECK(cudaMemcpyAsync(r, block, size_t(rb), cudaMemcpyDeviceToDevice, stream_));
      } else {
        PAR_NCCL_CHECK(ncclReduceScatter(s, r, size_t(recv_count), nccl_type(type), nccl_op(op),
                                         comm_, stream_));
      }
      end();
      return;
    }
    std::byte* buf = staging(rb * size_);
    copy(buf, s, rb * size_);
    PAR_NCCL_CHECK(ncclReduceScatter(buf, buf + rank_ * rb, size_t(recv_count), nccl_type(type),
                                     nccl_op(op), comm_, stream_));
    copy(r, buf + rank_ * rb, rb);
    finish_staged();
  }

  void all_gather(const void* send, void* recv, int64_t send_count, DataType type) override {
    PAR_ASSERT(send_count >= 0, "all_gather: negative count ", send_count);
    if (send_count == 0) return;
    const int64_t es = int64_t(size_of(type)), sb = send_count * es;
    auto* s = static_cast<const std::byte*>(send);
    auto* r = static_cast<std::byte*>(recv);
    std::byte* slot = r + rank_ * sb;
    PAR_ASSERT(s == r || s == slot || !overlaps(s, sb, r, sb * size_),
               "all_gather: send and recv overlap other than in place");
    PAR_CUDA_CHECK(cudaSetDevice(device_));
    begin();
    if (on_device(s) && on_device(r)) {
      if (s == r && rank_ != 0) {
        // MPI's in-place form (input at the front): move it to this rank's slot first.
        PAR_CUDA_CHECK(cudaMemcpyAsync(slot, r, size_t(sb), cudaMemcpyDeviceToDevice, stream_));
        s = slot;
      }
      PAR_NCCL_CHECK(ncclAllGather(s, r, size_t(send_count), nccl_type(type), comm_, stream_));
      end();
      return;
    }
    std::byte* buf = staging(sb * size_);
    copy(buf + rank_ * sb, s, sb);
    PAR_NCCL_CHECK(ncclAllGather(buf + rank_ * sb, buf, size_t(send_count), nccl_type(type),
                                 comm_, stream_));
    copy(r, buf, sb * size_);
    finish_staged();
  }

  void broadcast(void* buf, int64_t count, DataType type, int root) override {
    PAR_ASSERT(count >= 0, "broadcast: negative count ", count);
    PAR_ASSERT(root >= 0 && root < size_, "broadcast: root ", root, " outside group of ", size_);
    if (count == 0) return;
    const int64_t bytes = count * int64_t(size_of(type));
    auto* b = static_cast<std::byte*>(buf);
    PAR_CUDA_CHECK(cudaSetDevice(device_));
    begin();
    if (on_device(b)) {
      PAR_NCCL_CHECK(ncclBroadcast(b, b, size_t(count), nccl_type(type), root, comm_, stream_));
      end();
      return;
    }
    std::byte* st = staging(bytes);
    copy(st, b, bytes);
    PAR_NCCL_CHECK(ncclBroadcast(st, st, size_t(count), nccl_type(type), root, comm_, stream_));
    copy(b, st, bytes);
    finish_staged();
  }

  // Returns once every rank has reached it and the work queued before it on the compute
  // stream has finished.
  void barrier() override {
    PAR_CUDA_CHECK(cudaSetDevice(device_));
    begin();
    std::byte* one = staging(sizeof(float));
    PAR_NCCL_CHECK(ncclAllReduce(one, one, 1, ncclFloat32, ncclSum, comm_, stream_));
    finish_staged();
  }

 private:
  // The collective's stream waits for the data the compute stream has queued so far.
  void begin() {
    PAR_CUDA_CHECK(cudaEventRecord(ready_, compute_));
    PAR_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  }
  // Later work on the compute stream waits for the collective.
  void end() {
    PAR_CUDA_CHECK(cudaEventRecord(done_, stream_));
    PAR_CUDA_CHECK(cudaStreamWaitEvent(compute_, done_, 0));
  }
  // Host results: wait for them here, and surface an asynchronous NCCL failure.
  void finish_staged() {
    cuda::wait_for_stream(stream_, "a collective's result for the host");
    ncclResult_t async = ncclSuccess;
    PAR_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
    PAR_NCCL_CHECK(async);
  }

  // "" while NCCL reports no asynchronous error on this communicator.
  std::string async_failure() {
    if (!comm_) return "";
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &async);
    if (r == ncclSuccess && (async == ncclSuccess || async == ncclInProgress)) return "";
    const ncclResult_t bad = r != ncclSuccess ? r : async;
    const char* detail = ncclGetLastError(comm_);
    return cat("NCCL failed on group rank ", rank_, " of ", size_, ": ", ncclGetErrorString(bad),
               detail && *detail ? cat(": ", detail) : std::string());
  }

  // Ends this communicator's collectives, queued or running; it is not used again. Called
  // from a thread of its own (device_wait.h), which starts on the default device.
  void abort() {
    if (!comm_) return;
    cudaSetDevice(device_);
    ncclCommAbort(comm_);
    comm_ = nullptr;
    aborted_ = true;
  }

  static bool on_device(const void* p) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
      cudaGetLastError();  // not a pointer CUDA knows: plain host memory
      return false;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
  }

  // Ordered on the communication stream; cudaMemcpyDefault works out the direction. One
  // side is the caller's host buffer, likely pageable, where the runtime may return only
  // once the stream's earlier work (a collective) is done: that is waited for first,
  // polling, so that a hung peer is seen (device_wait.h).
  void copy(void* dst, const void* src, int64_t bytes) {
    cuda::wait_for_stream(stream_, "a collective's host data");
    PAR_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDefault, stream_));
  }

  // Device memory for staging host buffers, grown on demand. Growing frees the old buffer,
  // which waits for the device, so no queued copy still uses it.
  std::byte* staging(int64_t bytes) {
    if (staging_bytes_ < bytes) {
      if (staging_) PAR_CUDA_CHECK(cudaFree(staging_));
      staging_ = nullptr;
      staging_bytes_ = 0;
      void* p = nullptr;
      PAR_CUDA_CHECK(cudaMalloc(&p, size_t(bytes)));
      staging_ = static_cast<std::byte*>(p);
      staging_bytes_ = bytes;
    }
    return staging_;
  }

  // Teardown never throws: the first error has already been reported.
  void release() {
    if (watch_ >= 0) cuda::remove_wait_watch(watch_);
    watch_ = -1;
    cudaSetDevice(device_);
    if (stream_ && !aborted_) cudaStreamSynchronize(stream_);
    if (comm_) ncclCommDestroy(comm_);
    comm_ = nullptr;
    if (staging_) cudaFree(staging_);
    staging_ = nullptr;
    if (ready_) cudaEventDestroy(ready_);
    if (done_) cudaEventDestroy(done_);
    if (stream_) cudaStreamDestroy(stream_);
    ready_ = done_ = nullptr;
    stream_ = nullptr;
  }

  int rank_, size_;
  int device_ = 0;
  cudaStream_t compute_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  ncclComm_t comm_ = nullptr;
  int watch_ = -1;         // the handle of device_wait's registration
  bool aborted_ = false;   // by a failed or timed-out wait
  std::byte* staging_ = nullptr;
  int64_t staging_bytes_ = 0;
};

}  // namespace

NcclId nccl_unique_id() {
  ncclUniqueId uid;
  const ncclResult_t r = ncclGetUniqueId(&uid);
  if (r != ncclSuccess)
    throw std::runtime_error(cat("ncclGetUniqueId failed on ", cuda::where(), ": ",
                                 ncclGetErrorString(r)));
  NcclId id;
  std::memcpy(id.bytes.data(), &uid, sizeof uid);
  return id;
}

std::unique_ptr<Communicator> make_nccl_communicator(const NcclId& id, int rank, int size,
                                                     void* compute_stream) {
  return std::make_unique<NcclCommunicator>(id, rank, size,
                                            static_cast<cudaStream_t>(compute_stream));
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& group, void* compute_stream) {
  NcclId id;
  if (group.rank() == 0) id = nccl_unique_id();
  group.broadcast(id.bytes.data(), int64_t(id.bytes.size()), DataType::kUInt8, 0);
  return make_nccl_communicator(id, group.rank(), group.size(), compute_stream);
}

}  // namespace par
