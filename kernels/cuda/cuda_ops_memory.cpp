// CudaOps's device memory and transfers (kernels/cuda/cuda_ops_impl.h): allocations
// tracked for the memory figures, grow-only scratch buffers, and uploads and downloads on
// the backend's stream (small uploads through a pinned staging ring, without a wait).
#include "kernels/cuda/cuda_ops_impl.h"
#include "kernels/cuda/device_wait.h"

namespace par::cuda {

namespace {

std::string gib(int64_t bytes) { return cat(double(bytes) / double(int64_t(1) << 30), " GiB"); }

}  // namespace

void CudaOps::track(int64_t delta) {
  allocated_ += delta;
  peak_ = std::max(peak_, allocated_);
}

MemoryStats CudaOps::memory() {
  use_device();
  MemoryStats m;
  m.allocated_bytes = allocated_;
  m.peak_bytes = peak_;
  size_t free_b = 0, total_b = 0;
  PAR_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  m.device_free_bytes = int64_t(free_b);
  m.device_total_bytes = int64_t(total_b);
  return m;
}

void* CudaOps::allocate(size_t bytes) {
  use_device();
  refuse_in_graph("an allocation");  // cudaMalloc is not allowed while the stream records
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, rounded);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: the process may recover (e.g. try a smaller batch)
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw std::runtime_error(cat("cudaMalloc of ", gib(int64_t(rounded)), " failed on device ",
                                 device_, ", ", where(), ": ", cudaGetErrorString(e), " (",
                                 gib(int64_t(free_b)), " free of ", gib(int64_t(total_b)),
                                 "; this process holds ", gib(allocated_), ")"));
  }
  sizes_[p] = rounded;
  track(int64_t(rounded));
  return p;
}

void CudaOps::deallocate(void* p) {
  if (!p) return;
  auto it = sizes_.find(p);
  PAR_ASSERT(it != sizes_.end(), "deallocate of a pointer this backend did not allocate");
  track(-int64_t(it->second));
  sizes_.erase(it);
  // cudaFree while the stream records would invalidate the recording without a word (a
  // destructor unwinding out of a step): end the recording first.
  if (graphs_ && graphs_->capturing()) graphs_->abort();
  // A kept step may point into p, and a later allocation may hand its address out again
  // for another use: such steps are recorded again before they are replayed.
  if (graphs_) graphs_->forget_replays();
  // cudaFree waits for the device, so no queued kernel still uses p. Destructors call
  // this, so a failure is reported rather than thrown: it only happens once the context
  // is broken, and the error that broke it has been thrown where it happened. Where a
  // collective may hang, the wait is a poll first (cudaFree's own would not end).
  try {
    wait_if_watched(stream_, "freeing device memory");
  } catch (const std::exception& err) {
    std::fprintf(stderr, "par: device memory not freed on device %d, %s: %s\n", device_,
                 where().c_str(), err.what());
    return;
  }
  cudaError_t e = cudaSetDevice(device_);
  if (e == cudaSuccess) e = cudaFree(p);
  if (e != cudaSuccess)
    std::fprintf(stderr, "par: cudaFree failed on device %d, %s: %s (%s)\n", device_,
                 where().c_str(), cudaGetErrorString(e), cudaGetErrorName(e));
}

void* CudaOps::scratch(int slot, size_t bytes) {
  Scratch& s = scratch_[size_t(slot)];
  if (s.bytes < bytes) {
    refuse_in_graph("a scratch buffer that must grow (run the step once unrecorded first)");
    if (s.p) {
      // Kept graphs may point into it: they are recorded again before they are replayed.
      graphs_->forget_replays();
      wait_if_watched(stream_, "a scratch buffer that grows");  // cudaFree's wait never ends
      PAR_CUDA_CHECK(cudaFree(s.p));  // synchronizes: earlier kernels are done with it
      track(-int64_t(s.bytes));
      s.p = nullptr;
      s.bytes = 0;
    }
    // Some headroom, so that a slowly growing size does not reallocate every call.
    const size_t want = (bytes + bytes / 8 + 255) / 256 * 256;
    const cudaError_t e = cudaMalloc(&s.p, want);
    if (e != cudaSuccess) {
      cudaGetLastError();
      s.p = nullptr;
      throw std::runtime_error(cat("cudaMalloc of ", gib(int64_t(want)),
                                   " of scratch failed on device ", device_, ", ", where(),
                                   ": ", cudaGetErrorString(e), " (this process holds ",
                                   gib(allocated_), ")"));
    }
    s.bytes = want;
    track(int64_t(want));
  }
  return s.p;
}

void CudaOps::upload(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  use_device();
  // The caller may reuse src as soon as this returns: a small upload is copied into the
  // staging ring first, from which the GPU copies in stream order, and does not wait; the
  // ring is reused only after the stream has drained.
  if (bytes <= kStagedUploadMax) {
    graph_uploaded_ = graph_uploaded_ || graphs_->capturing();
    if (staging_used_ + bytes > kStagingBytes) {
      refuse_in_graph("more than 1 MiB of uploads in one step");
      wait_for_stream(stream_, "upload");
      staging_used_ = 0;
    }
    char* slot = staging_ + staging_used_;
    std::memcpy(slot, src, bytes);
    staging_used_ += (bytes + 255) / 256 * 256;
    PAR_CUDA_CHECK(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, stream_));
    return;
  }
  refuse_in_graph("an upload of more than 64 KiB");
  wait_if_watched(stream_, "upload");  // from pageable memory the copy may wait unseen
  PAR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
  wait_for_stream(stream_, "upload");
  staging_used_ = 0;
}

void CudaOps::download(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  use_device();
  refuse_in_graph("download");
  // Into pageable memory the copy returns only once the stream's earlier work is done:
  // where a collective may hang, wait for that work first, polling (device_wait.h).
  wait_if_watched(stream_, "download");
  PAR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
  wait_for_stream(stream_, "download");
  staging_used_ = 0;  // the stream has drained: the staged uploads are done
}

void CudaOps::synchronize() {
  use_device();
  refuse_in_graph("synchronize");
  wait_for_stream(stream_, "synchronize");
  staging_used_ = 0;
}

}  // namespace par::cuda
